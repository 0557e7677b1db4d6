"""Unattended retraining on real components: watch, caching, notifications, the lock, failures, schedules."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select

from flows.sources import register_source
from registry.models import Run

from tests.conftest import PROJECT
from tests.integration.conftest import TINY, make_workspace, set_params

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def webhook():
    """A webhook receiver on 127.0.0.1: the JSON bodies POSTed to it, in order."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def _registry(ws: Path):
    from cli.common import sessions_for

    return sessions_for(ws)


def _versions(ws: Path) -> dict[int, str]:
    from registry import repository as repo

    with _registry(ws)() as session:
        return {v.version: v.stage for v in repo.list_versions(session)}


def _cohort_source(root: Path) -> Path:
    from components.demo.cohort import generate_cohort
    from components.config import default_params

    generate_cohort(root, default_params(cohort=TINY["cohort"]).cohort)
    return root


def test_watch_notify_reuse_and_a_failing_stage(tmp_path, prefect_api, clean_env, webhook, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.lock import WorkspaceBusy, workspace_lock
    from flows.pipeline import training_flow
    from flows.retrain import read_seen, watch_flow
    from flows.settings import get_settings
    from registry import repository as repo

    url, received = webhook
    monkeypatch.setenv("MEDGATE_WEBHOOK_URL", url)
    ws = make_workspace(tmp_path / "ws", TINY)
    source = _cohort_source(tmp_path / "incoming")
    label = register_source(get_settings(ws), str(source), "incoming")  # `--name incoming`: what every stored place calls it
    remote = tmp_path / "dvc-remote"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(remote)], cwd=ws, check=True, capture_output=True)

    # First look at a new source: a retraining run (trigger data-change) that promotes v1.
    first = watch_flow(label, str(ws))
    run = first["run"]
    assert first["changed"] and run["status"] == "completed" and run["trigger"] == "data-change"
    assert run["gate"]["promote"] and run["model_version"] == 1 and run["stages_reused"] == []
    assert read_seen(ws / ".medgate")[label]["digest"] == first["fingerprint"]["digest"]
    assert run["data_remote"] == "store" and any(remote.rglob("*.dir")), "dvc push sent the outputs to the remote"

    # The webhook got the summary: verdict, metrics, links to the three reports.
    assert [b["run_id"] for b in received] == [run["run_id"]]
    body = received[0]
    assert body["gate"]["promote"] is True and body["metrics"]["auc"] == run["metrics"]["auc"]
    assert set(body["links"]) == {"data-quality report", "run report", "model card"}
    assert all(Path(httpx.URL(u).path).exists() for u in body["links"].values())

    # Prefect: the run is named and tagged after trigger, dataset and model; artifacts link the reports.
    with _registry(ws)() as session:
        flow_run_id = repo.get_run(session, run["run_id"]).prefect_flow_run_id
    assert run["model_name"] == "incoming"  # named after the source
    keys = ["incoming-run-summary", "incoming-data-quality-report", "incoming-run-report", "incoming-model-card"]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        assert flow_run.name == "data-change-incoming"
        assert {"model:incoming", "dataset:incoming", "trigger:data-change"} <= set(flow_run.tags)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        assert {a.key for a in artifacts if a.flow_run_id == flow_run.id} == set(keys)
        summary_md = next(a for a in artifacts if a.key == "incoming-run-summary").data
        assert "gate: **PROMOTED**" in summary_md and "(file://" in summary_md

    # Unchanged content: the watch starts nothing; touching every file changes nothing either.
    assert watch_flow(label, str(ws)) ["run"] is None
    for f in source.rglob("*"):
        os.utime(f)
    assert watch_flow(label, str(ws))["changed"] is False

    # A re-run on unchanged data, code and params trains and builds nothing, and registers no duplicate.
    import bentoml

    bentos = len(bentoml.list())
    again = training_flow(source=label, workspace=str(ws), trigger="retrain")
    assert again["status"] == "completed" and again["reused_production"] == 1 and again["model_version"] == 1
    assert set(again["stages_reused"]) == {"ingest", "validate", "prepare", "train", "baseline", "evaluate", "push"}
    assert not {"ingest", "prepare", "train", "push", "package", "smoke_test"} & set(again["timings_s"])
    assert _versions(ws) == {1: "production"} and len(bentoml.list()) == bentos
    assert len(received) == 2 and received[1]["reused_production"] == 1

    # One train param changed: ingest, prepare and baseline are reused; train and evaluate run.
    set_params(ws, {"train": {"learning_rate": 0.001}})
    tuned = training_flow(source=label, workspace=str(ws), trigger="retrain")
    assert set(tuned["stages_reused"]) == {"ingest", "validate", "prepare", "baseline"}
    assert tuned["model_version"] == 2 and "train" in tuned["timings_s"] and "push" in tuned["timings_s"]
    # Validate reused its suites' outcomes, and wrote this run's own report.
    report = Path(tuned["validation"]["report"])
    assert report.parent.parent.name == tuned["run_id"] and report.read_bytes() == Path(again["validation"]["report"]).read_bytes()

    # New content while another run holds the workspace: the watch sees the change, its run is
    # refused with the holder named, and the new fingerprint stays unremembered for the next look.
    (source / "labels.csv").write_text((source / "labels.csv").read_text() + "\n")
    with workspace_lock(ws / ".medgate", "an operator's run"):
        with pytest.raises(WorkspaceBusy, match="an operator's run"):
            watch_flow(label, str(ws), lock_wait_s=0)
    assert read_seen(ws / ".medgate")[label]["digest"] == first["fingerprint"]["digest"]
    with _registry(ws)() as session:
        assert len(session.scalars(select(Run)).all()) == 3, "a refused run records nothing"

    # A failing stage fails the flow, naming the stage and the cause; production stays as it was.
    production = {v: s for v, s in _versions(ws).items() if s == "production"}
    dvc_yaml = yaml.safe_load((ws / "dvc.yaml").read_text())
    dvc_yaml["stages"]["train"]["cmd"] = "python -c \"raise SystemExit('simulated: CUDA out of memory')\""
    (ws / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    with pytest.raises(Exception, match="stage train failed"):
        training_flow(source=label, workspace=str(ws), trigger="retrain")
    with _registry(ws)() as session:
        failed = session.scalars(select(Run).order_by(Run.id.desc())).first()
        assert failed.status == "failed" and "stage train failed" in failed.error and "CUDA out of memory" in failed.error
        assert json.loads(Path(failed.summary["summary_path"]).read_text())["status"] == "failed"
    assert {v: s for v, s in _versions(ws).items() if s == "production"} == production
    assert received[-1]["status"] == "failed" and "stage train failed" in received[-1]["error"]
    get_settings.cache_clear()


def test_drift_marks_the_run_and_requires_retraining_before_promotion(first_run_copy, prefect_api, clean_env):
    """drift.require_retraining: drifted data trains and is promoted; the stale model returns only by override."""
    from components.demo.cohort import generate_cohort
    from components.config import default_params, load_params
    from flows.datasets import DEFAULT_COHORT_DIR
    from flows.pipeline import DEFAULT_MODEL_NAME, ValidationFailed, training_flow
    from flows.promotion import promote_manually
    from flows.settings import get_settings
    from registry import repository as repo

    # The session's first run (the embedded cohort, lesion share 0.50) made v1 production; it had no
    # production model to compare with, so it recorded no drift.
    ws = first_run_copy
    assert _versions(ws) == {1: "production"}
    set_params(ws, {"drift": {"max_class_share_change": 0.2, "require_retraining": True}})
    source, name = ws / DEFAULT_COHORT_DIR, DEFAULT_MODEL_NAME

    # New data whose lesion share moved from 0.50 to 0.75: beyond the bound, a warning, and the run trains on it.
    generate_cohort(source, default_params(cohort={**TINY["cohort"], "positive_fraction": 0.75}).cohort)
    drifted = training_flow(workspace=str(ws), trigger="retrain")
    assert drifted["status"] == "completed" and drifted["validation"]["success"]
    assert any(w.startswith("drift_class_share") for w in drifted["validation"]["warnings"]), drifted["validation"]
    assert drifted["drift"]["retraining_required"] and [c["name"] for c in drifted["drift"]["exceeded"]] == ["class_share"]
    assert drifted["drift"]["exceeded"][0]["value"] == pytest.approx(0.25)
    [check] = [c for c in drifted["gate"]["checks"] if c["kind"] == "drift"]
    assert (check["metric"], check["verdict"], check["value"]) == ("retrained_since_drift", "pass", 1.0)
    assert drifted["model_version"] == 2 and _versions(ws) == {1: "archived", 2: "production"}
    with _registry(ws)() as session:
        event = repo.latest_drift(session, name)
        run = repo.get_run(session, drifted["run_id"])
        assert event.dataset.version == drifted["dataset"]["version"] and event.run_id == run.id
        assert run.summary["drift"] == drifted["drift"]
        [audit] = [e for e in repo.audit_trail(session, name) if e.action == "drift"]
        assert audit.model_version_id == repo.get_version(session, name, 1).id
        assert "class_share 0.25 > 0.2" in audit.reason and "retraining required" in audit.reason

    # The stale v1 is refused by the named check, and comes back only through the audited override.
    params, sessions = load_params(ws / "params.yaml"), _registry(ws)
    refused = promote_manually(sessions, ws, params, name, 1, reason="back to v1", actor="tester")
    assert not refused.promoted and [c.metric for c in refused.failed_checks] == ["retrained_since_drift"]
    assert _versions(ws) == {1: "archived", 2: "production"}
    forced = promote_manually(sessions, ws, params, name, 1, reason="back to v1", actor="tester", override=True)
    assert forced.overridden and "OVERRIDE" in forced.audit_reason and "drift retrained_since_drift 0.0000" in forced.audit_reason
    # v2, trained on the drifted data, passes the check on its way back.
    again = promote_manually(sessions, ws, params, name, 2, reason="retrained on the new data", actor="tester")
    assert again.promoted and not again.overridden and _versions(ws) == {1: "archived", 2: "production"}

    # The default (require_retraining off): drift beyond the bound fails validation, and the run is marked too.
    set_params(ws, {"drift": {"require_retraining": False}})
    generate_cohort(source, default_params(cohort={**TINY["cohort"], "seed": 8}).cohort)  # lesion share back to 0.50, other patients
    with pytest.raises(ValidationFailed, match="drift_class_share"):
        training_flow(workspace=str(ws), trigger="retrain")
    assert _versions(ws) == {1: "archived", 2: "production"}
    with _registry(ws)() as session:
        latest = repo.latest_drift(session, name)
        assert latest.id != event.id and latest.baseline_version_id == repo.get_version(session, name, 2).id
        assert [e for e in repo.audit_trail(session, name) if e.action == "drift"][-1].reason.endswith(
            "validation fails on it (drift.require_retraining is off)")
    get_settings.cache_clear()


def _free_port() -> int:
    from services.processes import find_free_port

    return find_free_port()


def test_server_schedule_and_list(tmp_path, clean_env):
    """`medgate server` on 127.0.0.1; `medgate schedule --cron` registers and serves; `--list` shows next runs."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    ws = make_workspace(tmp_path / "ws", TINY)
    medgate = [sys.executable, "-m", "cli"]

    no_server = subprocess.run([*medgate, "schedule", "--list"], env={**env, "PREFECT_API_URL": ""}, capture_output=True, text=True, timeout=120)
    assert no_server.returncode == 2 and "medgate server" in no_server.stdout and "PREFECT_API_URL" in no_server.stdout

    server = subprocess.Popen([*medgate, "server", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = None
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/api/health", server)
        bad = subprocess.run([*medgate, "schedule", "--cron", "every tuesday", "-w", str(ws)], env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "not a valid cron expression" in bad.stdout
        served = subprocess.Popen([*medgate, "schedule", "--cron", "0 3 * * *", "-w", str(ws)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rows = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listed = subprocess.run([*medgate, "schedule", "--list", "--json"], env=env, capture_output=True, text=True, timeout=120)
            assert listed.returncode == 0, listed.stdout + listed.stderr
            rows = json.loads(listed.stdout)
            if rows and rows[0]["served"] and rows[0]["next_runs"]:
                break
            time.sleep(2)
        assert len(rows) == 1, rows
        row = rows[0]
        assert row["deployment"] == "retrain-flow/ws-retrain" and row["schedules"] == ["cron 0 3 * * * (UTC)"]
        assert row["served"] and row["parameters"]["trigger"] == "schedule" and row["parameters"]["workspace"] == str(ws)
        assert len(row["next_runs"]) == 3 and all(t[11:16] == "03:00" for t in row["next_runs"]), row["next_runs"]
        # "server" once its scheduler has created the runs (test_a_scheduled_run_fires_and_retrains waits
        # for that); until then --list computes them from the schedule.
        assert row["next_runs_from"] in ("server", "computed")
        table = subprocess.run([*medgate, "schedule", "--list"], env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120)
        assert "retrain-flow/ws-retrain" in table.stdout and "cron 0 3 * * *" in table.stdout
    finally:
        for proc in (served, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.mark.slow
def test_a_scheduled_run_fires_and_retrains(tmp_path, clean_env):
    """`medgate schedule --cron` against `medgate server`: the server's scheduler creates the run, the
    served deployment starts it at its minute, and it retrains the workspace (trigger schedule)."""
    from datetime import UTC, datetime, timedelta

    from registry import repository as repo

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    ws = make_workspace(tmp_path / "ws", {**TINY, "cohort": {"patients": 24, "images_per_patient": 2}, "train": {"epochs": 2, "batch_size": 16}})
    medgate = [sys.executable, "-m", "cli"]
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("server", "schedule")}
    procs = {}
    try:
        procs["server"] = subprocess.Popen([*medgate, "server", "--port", str(port)], env=env, stdout=logs["server"],
                                           stderr=subprocess.STDOUT, start_new_session=True)
        _wait_healthy(f"{api}/health", procs["server"])
        # One firing, at a whole minute 50-110 s ahead: time enough to register and schedule the deployment first.
        at = (datetime.now(UTC) + timedelta(seconds=110)).replace(second=0, microsecond=0)
        procs["schedule"] = subprocess.Popen([*medgate, "schedule", "--cron", f"{at.minute} {at.hour} * * *", "-w", str(ws)],
                                             env=env, stdout=logs["schedule"], stderr=subprocess.STDOUT, start_new_session=True)
        runs: list[dict] = []
        deadline = time.monotonic() + 480
        while not (runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")):
            logged = (tmp_path / "schedule.log").read_text()
            assert time.monotonic() < deadline and procs["schedule"].poll() is None, f"runs {runs}:\n{logged[-3000:]}"
            runs = _deployment_runs(api, "retrain-flow", "ws-retrain")
            time.sleep(2)
        listed = subprocess.run([*medgate, "schedule", "--list", "--json"], env=env, capture_output=True, text=True, timeout=120)
        with _registry(ws)() as session:
            scheduled = [(r.status, r.prefect_flow_run_id) for r in session.scalars(select(Run)) if r.trigger == "schedule"]
            production = repo.get_champion(session, "ct-lesion")
        subflows = [httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json() for _, flow_run_id in scheduled]
    finally:
        for proc in reversed(procs.values()):  # the runner pauses its deployment on the server as it stops
            _stop_group(proc)
        for log in logs.values():
            log.close()
    fired = runs[0]
    assert fired["state_type"] == "COMPLETED", (tmp_path / "schedule.log").read_text()[-3000:]
    assert fired["auto_scheduled"] and fired["name"] == "schedule-embedded" and fired["parameters"]["trigger"] == "schedule"
    assert datetime.fromisoformat(fired["expected_start_time"]) == at
    # The server's scheduler made the runs (the next ones are still waiting), not --list's own computation.
    [row] = json.loads(listed.stdout)
    assert row["next_runs_from"] == "server" and row["next_runs"][0].startswith((at + timedelta(days=1)).isoformat()[:16]), row
    # It retrained the workspace: one registry run, recorded by the training flow it ran as a subflow.
    assert [status for status, _ in scheduled] == ["completed"] and production.version == 1
    [subflow] = subflows
    assert subflow["parent_task_run_id"] and subflow["name"] == "schedule-embedded" and subflow["state_type"] == "COMPLETED"


def _deployment_runs(api: str, flow: str, deployment: str) -> list[dict]:
    """The flow runs of a deployment, earliest expected start first (Prefect's REST API)."""
    found = httpx.get(f"{api}/deployments/name/{flow}/{deployment}", timeout=10)
    if found.status_code == 404:  # not registered yet
        return []
    found.raise_for_status()
    body = {"deployments": {"id": {"any_": [found.json()["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).raise_for_status().json()


def _stop_group(proc: subprocess.Popen) -> None:
    """Ctrl-C to a process started in its own session and its children; SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left (a flow run the runner started)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no healthy Prefect server at {url} within {timeout_s} s")


def _medgate_run(ws: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "cli", "run", "--workspace", str(ws)], cwd=PROJECT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _kill_when(proc: subprocess.Popen, marker: str, during: tuple[str, ...] = (), timeout_s: float = 600) -> list[str]:
    """SIGKILL `proc` and its children (its process group) once a line containing `marker` appears
    and, if `during` is given, once a child process runs a command line holding those words in order
    (e.g. ("bentoml", "build"): the Bento build subprocess)."""
    import psutil

    lines = []
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            break
        assert time.monotonic() < deadline, "".join(lines[-30:])
    else:
        raise AssertionError(f"{marker!r} never appeared; exit {proc.wait()}:\n" + "".join(lines[-40:]))
    while during:
        assert proc.poll() is None and time.monotonic() < deadline, f"no {' '.join(during)} process:\n" + "".join(lines[-30:])
        if any(_runs(child, during) for child in psutil.Process(proc.pid).children(recursive=True)):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return lines


def _runs(process, words: tuple[str, ...]) -> bool:
    """Whether `process`'s command line holds `words` as consecutive arguments."""
    import psutil

    try:
        args = process.cmdline()
    except psutil.Error:  # it ended meanwhile
        return False
    return any(tuple(args[i:i + len(words)]) == words for i in range(len(args)))


@pytest.mark.slow
def test_killed_during_training_then_packaging_resumes_and_stays_consistent(tmp_path, prefect_api, clean_env):
    import bentoml

    from flows.lock import INTERRUPTED_ACTOR
    from flows.pipeline import training_flow
    from flows.settings import get_settings
    from registry import repository as repo

    ws = make_workspace(tmp_path / "ws", {**TINY, "train": {"epochs": 6, "batch_size": 16}})
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)  # its own ephemeral API, as an operator's `medgate run` has

    # Killed in training, after its second epoch was checkpointed.
    _kill_when(_medgate_run(ws, env), "epoch 2/6")
    with _registry(ws)() as session:  # every SQLite transaction here writes-locks: one session at a time
        [killed] = session.scalars(select(Run)).all()
    assert killed.status == "running" and _versions(ws) == {}
    resumed = training_flow(workspace=str(ws))
    assert resumed["closed_interrupted_run"] == killed.run_uid
    assert {"prepare"} <= set(resumed["stages_reused"]) <= {"ingest", "validate", "prepare"}, "training resumed; nothing after it reused"
    assert resumed["training"]["resumed_after_epoch"] >= 2, resumed["training"]
    assert _versions(ws) == {1: "production"}
    with _registry(ws)() as session:
        assert repo.get_run(session, killed.run_uid).status == "failed"
        assert "interrupted" in repo.get_run(session, killed.run_uid).error

    # Killed while v2's Bento is being built (a changed gate policy makes the same model a new
    # candidate). The flow registers v2 as a candidate (committed), then logs "packaging ... v2",
    # saves the model to the store and runs `bentoml build` in a subprocess: the kill lands there.
    set_params(ws, {"gate": {"default": {"values": {"auc": {"lower": 0.01}}}}})
    bentos = {str(b.tag) for b in bentoml.list()}
    lines = _kill_when(_medgate_run(ws, env), "packaging ct-lesion v2", during=("bentoml", "build"))
    assert not any("Task run 'smoke_test" in line for line in lines)
    assert _versions(ws) == {1: "production", 2: "candidate"}
    with _registry(ws)() as session:
        v2 = repo.get_version(session, "ct-lesion", 2)
        assert v2.bento_tag is None and v2.model_tag is None, "killed before its Bento was recorded"
        assert [(e.action, e.model_version_id) for e in repo.audit_trail(session)][-1] == ("register", v2.id)
        killed = session.scalars(select(Run).order_by(Run.id.desc())).first()
    assert killed.status == "running" and {str(b.tag) for b in bentoml.list()} == bentos, "no Bento of v2 was stored"

    # The next run closes the killed one, rejects its unfinished candidate with an audited reason,
    # retrains nothing, and gates, packages and promotes the same weights as v3.
    final = training_flow(workspace=str(ws))
    assert final["status"] == "completed" and final["closed_interrupted_run"] == killed.run_uid
    assert set(final["stages_reused"]) >= {"prepare", "train", "baseline", "evaluate"}, "nothing retrained"
    assert not {"prepare", "train", "baseline", "evaluate"} & set(final["timings_s"])
    assert final["model_version"] == 3 and _versions(ws) == {1: "archived", 2: "rejected", 3: "production"}
    with _registry(ws)() as session:
        assert [r.status for r in session.scalars(select(Run).order_by(Run.id))] == ["failed", "completed", "failed", "completed"]
        v2, v3 = repo.get_version(session, "ct-lesion", 2), repo.get_version(session, "ct-lesion", 3)
        assert v3.artifact_sha256 == v2.artifact_sha256 and v2.bento_tag is None
        [rejected] = [e for e in repo.audit_trail(session) if e.action == "reject"]
        assert rejected.model_version_id == v2.id and rejected.actor == INTERRUPTED_ACTOR and rejected.reason.startswith("interrupted")
    assert {str(b.tag) for b in bentoml.list()} == bentos | {final["bento_tag"]}
    get_settings.cache_clear()
