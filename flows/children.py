"""Child processes that end with the flow: a `dvc repro` (and the stage command it starts) never
outlives a killed run, so it cannot write into `data/` while the next run holds the workspace lock.

`start_child` runs the command under a small guard process in a session of its own. The guard asks
Linux for a signal when its parent dies (prctl PR_SET_PDEATHSIG) and then kills its whole process
group: the command and everything the command started (DVC's stage, its training workers), which
stay in that group. A kill of the flow's process with SIGKILL therefore takes them all down; so
does any other end of the flow's process, and `stop_child`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

# argv: the parent's pid, then the command. Signal 1 (PR_SET_PDEATHSIG) arrives as SIGTERM when the
# parent thread ends; a parent already gone before prctl took effect is seen by getppid.
_GUARD = """
import ctypes, os, signal, subprocess, sys
def reap(*_):
    os.killpg(0, signal.SIGKILL)
for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(sig, reap)
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    reap()
code = subprocess.Popen(sys.argv[2:]).wait()
sys.exit(code if code >= 0 else 128 - code)
"""


def start_child(command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen(command, **popen_kwargs)` under the guard (Linux): the command and its own
    children are killed when this process ends. The command's exit status is the guard's (a command
    killed by signal N exits 128 + N)."""
    if not sys.platform.startswith("linux"):
        return subprocess.Popen(list(command), start_new_session=True, **popen_kwargs)
    guarded = [sys.executable, "-I", "-S", "-c", _GUARD, str(os.getpid()), *command]  # -I -S: the standard library only
    return subprocess.Popen(guarded, start_new_session=True, **popen_kwargs)


def stop_child(proc: subprocess.Popen[Any]) -> None:
    """Kill the child's whole process group (a no-op when it is gone) and reap the guard."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
