"""`medgate run` without PREFECT_API_URL: the private Prefect API it starts (flows/prefect_api.py)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import PROJECT

SERVER_APP = "prefect.server.api.server:create_app"


def _env(prefect_home: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "MEDGATE_DEID_SALT": "test-salt"}
    for name in ("PREFECT_API_URL", "MEDGATE_DATABASE_URL", "MEDGATE_WORKSPACE", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    return env


def _servers_of(prefect_home: Path) -> list[psutil.Process]:
    """Prefect API server processes running with this PREFECT_HOME."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if SERVER_APP in (proc.info["cmdline"] or []) and proc.environ().get("PREFECT_HOME") == str(prefect_home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_medgate_run_records_its_flow_run_in_prefect_home_and_leaves_no_server(tmp_path, first_run_copy):
    home = tmp_path / "prefect"
    ws = first_run_copy  # a run on it is an unchanged re-run: quick, and a flow run like any other
    earlier = set((ws / "runs").glob("*/summary.json"))
    done = subprocess.run([sys.executable, "-m", "cli", "run", "--workspace", str(ws)], cwd=PROJECT, env=_env(home),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Error logging to API" not in done.stdout + done.stderr, "every log reached the API before it stopped"
    [summary_file] = set((ws / "runs").glob("*/summary.json")) - earlier
    summary = json.loads(summary_file.read_text())
    # The run is in the Prefect database under PREFECT_HOME, completed, as an ephemeral run's would be.
    with sqlite3.connect(home / "prefect.db") as db:
        rows = db.execute("SELECT name, state_type FROM flow_run").fetchall()
    assert ("manual-embedded", "COMPLETED") in rows, rows
    assert summary["status"] == "completed"
    assert _servers_of(home) == [], "the run's API server stopped with it"


def test_the_private_api_dies_with_a_killed_run(tmp_path):
    home = tmp_path / "prefect"
    script = ("import time; from flows.prefect_api import start_prefect_api; api = start_prefect_api(); api.wait_ready(); "
              "print(api.url, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT, env=_env(home), stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        [server] = _servers_of(home)
        os.kill(proc.pid, signal.SIGKILL)  # no atexit runs: the kernel's parent-death signal must stop it
        proc.wait(timeout=10)
        server.wait(timeout=15)
    finally:
        proc.kill()
    deadline = time.monotonic() + 5
    while _servers_of(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _servers_of(home) == []
