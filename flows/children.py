"""Child processes that end with the flow: a `dvc repro` (and the stage command it starts) never
outlives a killed run, so it cannot write into `data/` while the next run holds the workspace lock.

`start_child` runs the command under a small guard process. The guard asks Linux for a signal when
its parent dies (prctl PR_SET_PDEATHSIG) and starts the command in a process group of its own,
which DVC's stage and its training workers join; when the flow's process ends, however it ends
(SIGKILL included), or `stop_child` is called, the guard kills that whole group. The guard itself
stays in the caller's group, so a Ctrl-C at the terminal still reaches it: it passes the SIGINT on
to the command's group, which stops as it did before (DVC ignores it while its stage handles it).
"""

from __future__ import annotations

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
child = None
def signal_group(sig):
    if child is not None:
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            pass
def kill(*_):
    signal_group(signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)
signal.signal(signal.SIGTERM, kill)
signal.signal(signal.SIGHUP, kill)
signal.signal(signal.SIGINT, lambda *_: signal_group(signal.SIGINT))
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    kill()
child = subprocess.Popen(sys.argv[2:], process_group=0)
code = child.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


def start_child(command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen(command, **popen_kwargs)` under the guard (on Linux): the command and its
    own children are killed when this process ends. The command's exit status is the guard's (a
    command killed by signal N exits 128 + N)."""
    if not sys.platform.startswith("linux"):
        return subprocess.Popen(list(command), **popen_kwargs)
    guarded = [sys.executable, "-I", "-S", "-c", _GUARD, str(os.getpid()), *command]  # -I -S: the standard library only
    return subprocess.Popen(guarded, **popen_kwargs)


def stop_child(proc: subprocess.Popen[Any]) -> None:
    """Kill the command's whole process group (through its guard) and reap the guard."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait()
