"""services.readiness: the roll of a server's workers that have loaded their model."""

from __future__ import annotations

import os
import subprocess
import sys

from services.readiness import WorkerRoll, remove_stale_folders, sibling_folder


def test_the_roll_is_complete_when_every_expected_worker_has_entered(tmp_path):
    first, second = WorkerRoll(2, tmp_path / "roll"), WorkerRoll(2, tmp_path / "roll")
    assert not first.complete()  # no worker yet: the folder does not exist
    first.enter(1)
    first.enter(1)  # a restarted worker keeps its index: still one of two
    assert not first.complete() and not second.complete()
    second.enter(2)
    assert first.complete() and second.complete()


def test_workers_of_one_server_share_a_folder_and_other_servers_do_not():
    child = [sys.executable, "-c", "from services.readiness import sibling_folder; print(sibling_folder())"]
    siblings = {subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip() for _ in range(2)}
    assert siblings == {str(sibling_folder().with_name(f"medgate-workers-{os.getpid()}-{_start_time(os.getpid())}"))}
    assert str(sibling_folder()) not in siblings  # this process's own parent is another server


def test_the_folders_of_ended_servers_are_removed(tmp_path):
    live = tmp_path / f"medgate-workers-{os.getpid()}-{_start_time(os.getpid())}"
    reused = tmp_path / f"medgate-workers-{os.getpid()}-1"  # this process id, another start time: ended
    ended = tmp_path / "medgate-workers-999999999-5"
    for folder in (live, reused, ended):
        folder.mkdir()
        (folder / "worker-1").touch()
    remove_stale_folders(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [live.name]


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[19]
