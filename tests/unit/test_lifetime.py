"""services.lifetime: a process ends with its parent, even when the parent is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT, running, wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# The parent starts a child that asks to die with it, prints the child's pid, then waits for ever.
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(child.pid, flush=True)
time.sleep(600)
"""
CHILD = """
import sys, time
from services.lifetime import die_with_parent
die_with_parent(int(sys.argv[1]))
time.sleep(600)
"""


def test_a_child_ends_when_its_parent_is_killed():
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True, env=env)
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.5)  # the child has imported and asked
        assert running(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_gone([child], "the child of a killed parent", timeout_s=10)
    finally:
        parent.kill()
        if running(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_is_already_gone_ends_at_once():
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    code = "import os, time; from services.lifetime import die_with_parent; die_with_parent(os.getpid()); time.sleep(600)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=False)
    assert proc.returncode == -signal.SIGTERM
