"""Real servers of the scale tier, on 127.0.0.1: a PostgreSQL database of their own, a Prefect server on
it with a `process` work pool and a worker, and an S3-compatible store (moto's server mode). Shared by
the tests under tests/scale and by benchmarks/pipeline.py.

Each server is a subprocess in its own process group, stopped (SIGTERM, then SIGKILL) when its block ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from services.processes import find_free_port, stop_process_group

PROJECT = Path(__file__).resolve().parents[2]
# The PostgreSQL the tests use (the same variable as the registry's unit tests); its user may create databases.
POSTGRES_URL = os.environ.get("MEDGATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
S3_KEYS = {"AWS_ACCESS_KEY_ID": "medgate-test", "AWS_SECRET_ACCESS_KEY": "medgate-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def postgres_problem() -> str | None:
    """None when PostgreSQL answers at POSTGRES_URL, else why not."""
    import psycopg

    try:
        with psycopg.connect(_conninfo(POSTGRES_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: skip, with the reason
        return f"PostgreSQL not reachable at {make_url(POSTGRES_URL).render_as_string()}: {type(exc).__name__}"
    return None


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new database on POSTGRES_URL's server, named `<prefix>_<random>`, dropped (connections closed)
    when the block ends. Yields its SQLAlchemy URL with POSTGRES_URL's driver."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(_conninfo(POSTGRES_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_conninfo(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_driver(url: str, driver: str) -> str:
    """`url` with another SQLAlchemy driver, e.g. `postgresql+asyncpg` for Prefect's server."""
    return make_url(url).set(drivername=driver).render_as_string(hide_password=False)


@contextlib.contextmanager
def process_group(command: list[str], env: Mapping[str, str], log: Path, cwd: Path = PROJECT) -> Iterator[subprocess.Popen[bytes]]:
    """`command` in a process group of its own (its output in `log`), stopped when the block ends."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc)


def wait_http(url: str, proc: subprocess.Popen[Any], log: Path, timeout_s: float = 120.0) -> None:
    """Block until GET `url` answers 200; AssertionError naming the log when the server exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the server exited ({proc.returncode}); its output: {log}\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"{url}: no answer within {timeout_s:.0f} s; the server's output: {log}\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def base_env(scratch: Path) -> dict[str, str]:
    """This environment with the project's code first on the path, no Prefect server named, and
    Prefect's home in `scratch`."""
    from flows.settings import configure_offline

    configure_offline()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MEDGATE_DATABASE_URL", "MEDGATE_WORKSPACE")}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PREFECT_HOME"] = str(scratch / "prefect-home")
    return env


@contextlib.contextmanager
def prefect_server(database_url: str, env: Mapping[str, str], log: Path) -> Iterator[str]:
    """`medgate server` on `database_url` (a PostgreSQL URL: Prefect's server gets it with asyncpg) on a
    free port; yields its API URL once `/api/health` answers."""
    port = find_free_port()
    command = [sys.executable, "-m", "cli", "server", "--port", str(port), "--database-url", with_driver(database_url, "postgresql+asyncpg")]
    with process_group(command, {**env, "PREFECT_UI_ENABLED": "false"}, log) as proc:
        api = f"http://127.0.0.1:{port}/api"
        wait_http(f"{api}/health", proc, log)
        yield api


def prefect(api: str, env: Mapping[str, str], *args: str, timeout_s: float = 120.0) -> str:
    """`prefect ARGS` against the server at `api`; its output, or AssertionError with it."""
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], env={**env, "PREFECT_API_URL": api}, cwd=PROJECT,
                          capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@contextlib.contextmanager
def worker(api: str, pool: str, env: Mapping[str, str], log: Path, poll_s: float | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`prefect worker start --pool POOL` (type process); `poll_s`: PREFECT_WORKER_QUERY_SECONDS (Prefect's default: 10)."""
    worker_env = {**env, "PREFECT_API_URL": api}
    if poll_s is not None:
        worker_env["PREFECT_WORKER_QUERY_SECONDS"] = str(poll_s)
    with process_group([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"], worker_env, log) as proc:
        yield proc


def start_deployment_run(api: str, deployment: str, parameters: dict[str, Any] | None = None) -> str:
    """A flow run of deployment `<flow>/<deployment>`, scheduled for now; returns its id."""
    with httpx.Client(base_url=api, timeout=30, trust_env=False) as client:
        found = client.get(f"/deployments/name/{deployment}")
        found.raise_for_status()
        run = client.post(f"/deployments/{found.json()['id']}/create_flow_run", json={"parameters": parameters or {}})
        run.raise_for_status()
        return str(run.json()["id"])


def wait_flow_run(api: str, run_id: str, timeout_s: float) -> dict[str, Any]:
    """The flow run once its state is final; AssertionError when not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=api, timeout=30, trust_env=False) as client:
        while time.monotonic() < deadline:
            run = client.get(f"/flow_runs/{run_id}").json()
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished within {timeout_s:.0f} s (state {run['state']['type']})")


def api_post(api: str, path: str, body: dict[str, Any]) -> Any:
    answer = httpx.post(f"{api}{path}", json=body, timeout=30, trust_env=False)
    answer.raise_for_status()
    return answer.json()


def scheduling_delay(api: str, run_id: str) -> dict[str, float]:
    """Seconds from a flow run's scheduled start to the worker taking it (its Pending state) and to the
    run starting in the worker's subprocess (Running), from the run's state history."""
    states = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id}, timeout=30, trust_env=False).json()
    scheduled = next(s for s in states if s["type"] == "SCHEDULED")
    at = _time(scheduled["state_details"].get("scheduled_time") or scheduled["timestamp"])
    first = {kind: min(_time(s["timestamp"]) for s in states if s["type"] == kind) for kind in ("PENDING", "RUNNING")}
    return {"to_worker_s": (first["PENDING"] - at).total_seconds(), "to_running_s": (first["RUNNING"] - at).total_seconds()}


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@contextlib.contextmanager
def s3_server(env: Mapping[str, str], log: Path) -> Iterator[str]:
    """moto's S3-compatible server on a free port; yields its endpoint URL."""
    port = find_free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with process_group(command, {**env, **S3_KEYS}, log) as proc:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", proc, log)
        yield endpoint


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region_name=S3_KEYS["AWS_DEFAULT_REGION"])
