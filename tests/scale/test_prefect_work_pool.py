"""A Prefect server on PostgreSQL, a `process` work pool, a worker: the retraining deployment's run is
taken by the worker and completes, and the server's API shows its task runs and artifacts."""

import subprocess
import sys
from pathlib import Path

import pytest

from flows.workspace import create_workspace
from tests.scale.conftest import QUICK
from tests.scale.servers import (
    PROJECT, api_post, postgres_database, prefect, prefect_server, scheduling_delay, start_deployment_run, wait_flow_run, worker,
)

pytestmark = pytest.mark.timeout(600)


def test_a_work_pool_worker_runs_the_retraining_deployment(tmp_path: Path, env: dict[str, str], postgres: None) -> None:
    ws = create_workspace(tmp_path / "ws", QUICK)
    with postgres_database("medgate_prefect") as db, prefect_server(db, env, tmp_path / "server.log") as api:
        prefect(api, env, "work-pool", "create", "medgate-test", "--type", "process")
        deployed = subprocess.run(
            [sys.executable, "-m", "cli", "schedule", "--pool", "medgate-test", "--workspace", str(ws)],
            env={**env, "PREFECT_API_URL": api}, cwd=PROJECT, capture_output=True, text=True, timeout=120,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        name = f"retrain-flow/{ws.name}-retrain"
        assert f"deployment {name} on work pool medgate-test" in " ".join(deployed.stdout.split())

        deployment = api_post(api, "/deployments/filter", {"deployments": {"name": {"any_": [f"{ws.name}-retrain"]}}})[0]
        assert deployment["work_pool_name"] == "medgate-test" and deployment["schedules"] == []  # no cron: runs when started
        run_id = start_deployment_run(api, name)
        with worker(api, "medgate-test", env, tmp_path / "worker.log", poll_s=2):
            run = wait_flow_run(api, run_id, timeout_s=480)
        assert run["state"]["type"] == "COMPLETED", (run["state"], (tmp_path / "worker.log").read_text()[-4000:])
        assert run["work_pool_name"] == "medgate-test"
        delay = scheduling_delay(api, run_id)
        assert 0 <= delay["to_worker_s"] <= delay["to_running_s"], delay

        # The training flow ran as the deployment's subflow; its tasks and artifacts are on the server.
        children = api_post(api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})
        training = [r for r in children if r["state"]["type"] == "COMPLETED"]
        assert len(training) == 1, [(r["name"], r["state"]["type"]) for r in children]
        tasks = api_post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [training[0]["id"]]}}})
        done = {t["name"].rsplit("-", 1)[0] for t in tasks if t["state"]["type"] == "COMPLETED"}
        assert {"ingest", "version", "validate", "prepare", "train", "evaluate", "gate", "package", "smoke_test", "promote"} <= done, done
        artifacts = api_post(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id, training[0]["id"]]}}})
        keys = {a["key"] for a in artifacts}
        assert {"ct-lesion-run-summary", "ct-lesion-model-card"} <= keys, keys

    summaries = sorted((ws / "runs").glob("*/summary.json"))
    assert len(summaries) == 1  # the worker ran the flow on the deployment's workspace
