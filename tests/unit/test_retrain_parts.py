"""Pieces of unattended retraining without a flow run: content fingerprints, the workspace lock, stage waves and folders, notices."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.caching import source_fingerprint
from components.data.artifacts import write_json_atomically
from flows.lock import HOLDER_FILE, WorkspaceBusy, read_holder, workspace_lock
from flows.notify import notice, render_markdown
from flows.workspace import WorkspaceError, stage_dir, stage_waves
from tests.conftest import PROJECT


def test_fingerprint_follows_content_not_timestamps(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "1.png").write_bytes(b"one")
    (src / "labels.csv").write_text("path,label\n")
    first = source_fingerprint(src)
    assert first.files == 2

    later = time.time() + 3600
    for f in (src / "a" / "1.png", src / "labels.csv"):
        os.utime(f, (later, later))
    assert source_fingerprint(src) == first, "a touched file is not a change"

    (src / "a" / "1.png").write_bytes(b"ONE")
    changed = source_fingerprint(src)
    assert changed != first
    (src / "a" / "1.png").write_bytes(b"one")
    assert source_fingerprint(src) == first, "same bytes again: same fingerprint"

    (src / "a" / "2.png").write_bytes(b"two")
    added = source_fingerprint(src)
    assert added.files == 3 and added != first
    (src / "a" / "2.png").unlink()
    (src / "a" / "1.png").rename(src / "a" / "3.png")
    assert source_fingerprint(src) != first, "a renamed file is a change"
    (src / "a" / "3.png").unlink()
    assert source_fingerprint(src).files == 1

    npz = tmp_path / "d.npz"
    npz.write_bytes(b"x" * 10)
    assert source_fingerprint(npz).files == 1
    with pytest.raises(FileNotFoundError, match="missing"):
        source_fingerprint(tmp_path / "missing")


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from flows.lock import workspace_lock
    with workspace_lock(Path(sys.argv[1]), "test holder") as lock:
        lock.record_run("run-that-never-ends")
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _hold(state_dir: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(state_dir), str(seconds)], cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_refuses_names_the_holder_waits_and_survives_a_kill(tmp_path):
    state = tmp_path / ".medgate"
    holder = _hold(state, 3)
    with pytest.raises(WorkspaceBusy) as refused:
        with workspace_lock(state, "second run"):
            pass
    message = str(refused.value)
    assert "workspace busy" in message and f"pid {holder.pid}" in message and "test holder" in message and "--wait" in message

    started = time.monotonic()
    with workspace_lock(state, "patient run", wait_s=30, poll_s=0.1) as lock:
        assert time.monotonic() - started > 0.5  # it waited for the holder to finish
        assert lock.previous is None, "a clean release leaves no holder record"
        assert read_holder(state)["purpose"] == "patient run"
    assert holder.wait(timeout=10) == 0
    assert read_holder(state) is None

    killed = _hold(state, 60)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    with workspace_lock(state, "after the kill") as lock:  # the kernel released the dead holder's lock
        assert lock.previous["run_uid"] == "run-that-never-ends" and lock.previous["pid"] == killed.pid


def test_holder_record_is_never_seen_half_written(tmp_path):
    """A reader in another process polls the record while the holder rewrites it: it is always whole
    (the old code truncated, then wrote, in place)."""
    state = tmp_path / ".medgate"
    reader = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from flows.lock import read_holder
        seen = gaps = 0
        end = time.monotonic() + float(sys.argv[2])
        while time.monotonic() < end:
            seen += 1
            gaps += read_holder(Path(sys.argv[1])) is None
        print(seen, gaps)
    """)
    with workspace_lock(state, "rewriting run") as lock:
        proc = subprocess.Popen([sys.executable, "-c", reader, str(state), "1.5"], cwd=PROJECT, stdout=subprocess.PIPE, text=True)
        while proc.poll() is None:
            lock.record_run(f"run-{time.monotonic()}")
        seen, gaps = map(int, proc.stdout.read().split())
    assert seen > 100 and gaps == 0, f"{gaps} of {seen} reads found no whole holder record"
    assert not (state / HOLDER_FILE).exists()


def test_json_is_written_atomically_by_concurrent_writers_and_flushed(tmp_path, monkeypatch):
    """Writers of one file never share a temporary name (a fixed one made a writer's rename fail or move
    another's half-written file); the file and its folder are flushed to disk."""
    import threading

    path = tmp_path / "state" / "record.json"
    failures: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(150):
                write_json_atomically(path, {"writer": n, "i": i, "pad": "x" * 2000})
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert json.loads(path.read_text())["i"] == 149
    assert [p.name for p in path.parent.iterdir()] == ["record.json"], "no temporary file is left behind"

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    write_json_atomically(path, {"last": True})
    assert str(path.parent) in synced and any(".record.json." in s for s in synced), synced


ORPHAN_PARENT = textwrap.dedent("""
    import sys, time
    from flows.children import start_child
    stage = "import os, subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    stage += "open(sys.argv[1] + '.tmp', 'w').write(f'{os.getpid()} {w.pid}'); os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(60)"
    start_child([sys.executable, "-c", stage, sys.argv[1]])
    time.sleep(60)
""")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_runs_children_die_with_it(tmp_path):
    """The flow's process killed with SIGKILL: the command it started (as `dvc repro`) and that command's
    own child (as DVC's stage) end too, instead of writing on into the next run's workspace."""
    pids = tmp_path / "pids"
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_PARENT, str(pids)], cwd=PROJECT)
    deadline = time.monotonic() + 30
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stage, worker = map(int, pids.read_text().split())
    assert _alive(stage) and _alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (_alive(stage) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in (stage, worker) if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes {left} outlived their killed parent"


def test_a_stopped_child_takes_its_children_and_exit_statuses_pass_through(tmp_path):
    from flows.children import start_child, stop_child

    assert start_child([sys.executable, "-c", "import sys; sys.exit(3)"]).wait() == 3
    assert start_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]).wait() == 128 + 9
    pids = tmp_path / "pids"
    script = "import os, subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    script += "open(sys.argv[1], 'w').write(f'{os.getpid()} {w.pid}'); time.sleep(60)"
    proc = start_child([sys.executable, "-c", script, str(pids)])
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    children = list(map(int, pids.read_text().split()))
    stop_child(proc)
    deadline = time.monotonic() + 10
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, children))


def test_stage_waves_follow_dvc_yaml(tmp_path):
    assert stage_waves(PROJECT) == [["prepare"], ["train", "baseline"], ["evaluate"]]
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  a: {cmd: x, deps: [b/out], outs: [a]}\n  b: {cmd: y, deps: [a/file], outs: [b]}\n"
    )
    with pytest.raises(Exception, match="cycle"):
        stage_waves(tmp_path)


def test_the_flow_runs_each_dvc_yaml_stage_as_a_task_of_its_name_in_its_wave():
    from flows.pipeline import STAGE_WAVES

    assert [[stage.name for stage in wave] for wave in STAGE_WAVES] == stage_waves(PROJECT)


def test_stage_folders_are_read_from_dvc_yaml_outputs():
    folders = {stage: stage_dir(PROJECT, stage).relative_to(PROJECT).as_posix() for stage in ("prepare", "train", "baseline", "evaluate")}
    assert folders == {"prepare": "data/prepare", "train": "data/train", "baseline": "data/baseline", "evaluate": "data/evaluate"}
    assert stage_dir(PROJECT, "train", persist=True) == PROJECT / "data" / "train_state"
    with pytest.raises(WorkspaceError, match="no stage 'package'"):
        stage_dir(PROJECT, "package")
    with pytest.raises(WorkspaceError, match="no stage 'prepare' with persistent outputs"):
        stage_dir(PROJECT, "prepare", persist=True)


def test_notice_carries_verdict_metrics_and_existing_report_links(tmp_path):
    report = tmp_path / "report.html"
    report.write_text("<html/>")
    summary = {
        "run_id": "r1", "status": "completed", "trigger": "schedule", "model_name": "ct-lesion", "model_version": 3,
        "metrics": {"auc": 0.91, "sensitivity": 0.8}, "report": str(report), "model_card": str(tmp_path / "absent.md"),
        "validation": {"report": str(report)},
        "gate": {"promote": False, "reason": "1 check failed", "checks": [
            {"kind": "change", "metric": "auc", "verdict": "fail", "value": -0.03, "threshold": -0.02, "comparison": ">="},
            {"kind": "value", "metric": "auc", "verdict": "pass", "value": 0.91, "threshold": 0.85, "comparison": ">="},
        ]},
    }
    body = notice(summary)
    assert body["gate"] == {"promote": False, "reason": "1 check failed", "failed_checks": ["change auc"]}
    assert body["metrics"]["auc"] == 0.91 and body["trigger"] == "schedule"
    assert body["links"] == {"data-quality report": report.as_uri(), "run report": report.as_uri()}  # the absent card is left out
    markdown = render_markdown(summary)
    assert "gate: **refused** (1 check failed)" in markdown and f"[run report]({report.as_uri()})" in markdown



def test_the_best_sweep_trial_of_an_ensemble_hands_over_every_member_checkpoint(tmp_path):
    from flows.sweep import apply_best

    import shutil

    (tmp_path / "ws").mkdir()
    shutil.copyfile(Path(__file__).parents[2] / "dvc.yaml", tmp_path / "ws" / "dvc.yaml")
    (tmp_path / "ws" / "params.yaml").write_text("train:\n  ensemble: 1\n")
    for member in (0, 1):
        (tmp_path / "trial" / f"member-{member}").mkdir(parents=True)
        (tmp_path / "trial" / f"member-{member}" / "checkpoint.pt").write_bytes(b"member %d" % member)
    apply_best(tmp_path / "ws", {"ensemble": 2}, tmp_path / "trial")
    assert "ensemble: 2" in (tmp_path / "ws" / "params.yaml").read_text()
    state = tmp_path / "ws" / "data" / "train_state"
    assert [(state / f"member-{m}" / "checkpoint.pt").read_bytes() for m in (0, 1)] == [b"member 0", b"member 1"]
