"""Processes that end with the process that started them (Linux's PR_SET_PDEATHSIG).

Without it, a process whose parent is killed (SIGKILL, the OOM killer) lives on: a server's worker
processes kept the model in memory and answered on the old port after their `bentoml serve` was
killed (seen after the supervisor test killed a backend), and a flow's Prefect API server outlived
a killed run.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Have Linux send this process SIGTERM when its parent ends, however it ends; with `parent` (the
    process that should be the parent), SIGTERM it now if that one is already gone. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
