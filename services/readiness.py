"""Readiness of a server with several worker processes: ready once every worker has loaded its model.

BentoML's `/readyz` is answered by whichever worker takes the connection, and a worker takes connections
as soon as its own model is loaded. Clients that open their keep-alive connections at the first 200 (a
load balancer, a Kubernetes Service, `medgate serve`'s proxy, a benchmark) are then all held by the first
worker while the others sit idle: at concurrency 32 with 2 workers, 198 requests/s against 621 once both
workers held connections (benchmarks/serving.py). So each worker enters itself in a roll kept in a folder
its siblings share, and `/readyz` answers 200 only when the roll is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


PREFIX = "medgate-workers-"


def sibling_folder() -> Path:
    """A folder shared by the worker processes of one server and by no other server: named after their
    parent (the server's supervising process) and its start time, so a reused process id is another folder."""
    parent = os.getppid()
    return Path(tempfile.gettempdir()) / f"{PREFIX}{parent}-{_start_time(parent)}"


def remove_stale_folders(root: Path) -> None:
    """Remove the folders under `root` of servers that have ended (a killed worker leaves its entry)."""
    for folder in root.glob(f"{PREFIX}*-*"):
        pid, _, started = folder.name.removeprefix(PREFIX).partition("-")
        if pid.isdigit() and _start_time(int(pid)) != started:
            shutil.rmtree(folder, ignore_errors=True)


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat, the start time in clock ticks since boot ("0" where unknown)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]  # the name may hold spaces
    except (OSError, IndexError):
        return "0"


class WorkerRoll:
    """The workers of one server that have loaded their model; complete when `expected` have."""

    def __init__(self, expected: int, folder: Path | None = None):
        self.expected = expected
        self.folder = folder or sibling_folder()
        self._complete = False

    def enter(self, worker: int | str) -> None:
        """Record `worker` (BentoML's worker index; a restarted worker keeps its index) as ready."""
        remove_stale_folders(self.folder.parent)
        self.folder.mkdir(mode=0o700, exist_ok=True)
        (self.folder / f"worker-{worker}").touch()

    def complete(self) -> bool:
        """Whether every expected worker has entered (stays true once it is)."""
        if not self._complete:
            with contextlib.suppress(FileNotFoundError):
                self._complete = sum(1 for _ in self.folder.glob("worker-*")) >= self.expected
        return self._complete
