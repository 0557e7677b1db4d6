"""Beyond one process: the flow's task runner from `params.yaml`'s `orchestration` section.

`sequential` (default) and `threads` run tasks in this process; `dask` runs them on a Dask
cluster through `prefect-dask`: the scheduler at `orchestration.dask_address`, or without one a
local cluster of `dask_workers` processes (the same code path, on one machine). Dask workers must
see the workspace at the same path (a shared file system) and have medgate installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import OrchestrationConfig, load_params


def task_runner_for(cfg: OrchestrationConfig) -> Any:
    """The Prefect task runner `cfg` asks for (a new one: a runner is entered once per flow run)."""
    if cfg.task_runner != "dask":
        return ThreadPoolTaskRunner(max_workers=1 if cfg.task_runner == "sequential" else None)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RuntimeError("orchestration.task_runner is dask but prefect-dask is not installed (pip install prefect-dask)") from None
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    # One thread per worker process: each task (a DVC stage, a sweep trial) uses the cores itself.
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": None})


def configured(flow: Flow, workspace: Path) -> Flow:
    """`flow` with the task runner the workspace's params.yaml configures."""
    return flow.with_options(task_runner=task_runner_for(load_params(workspace / "params.yaml").orchestration))
