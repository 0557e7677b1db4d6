"""Retraining triggers: on demand, on a schedule, and when the source's content changes.

All of them run the one training flow (`flows.pipeline.training_flow`) with the task runner the
workspace configures (`flows.distributed.configured`), under the workspace lock, and differ
only in `trigger`: `retrain`, `schedule` or `data-change`.

- `retrain_flow`: what a deployment runs; `medgate schedule --cron` serves it on a cron schedule.
- `watch_flow`: one look at a source. It hashes the source's content (flows.caching.source_fingerprint:
  every file's sha256, never timestamps) and starts a retraining run only when that differs from
  the fingerprint last seen, kept per source in `.medgate/watch.json`. `medgate watch` looks every
  `retrain.watch_interval_s` seconds; `medgate watch --serve` registers it as a deployment on that
  interval instead.

Schedules need a Prefect server (`medgate server`; `PREFECT_API_URL`): the ephemeral API that
`medgate run` starts by itself runs no scheduler.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from components.config import load_params
from flows.caching import Fingerprint, source_fingerprint
from flows.distributed import configured
from flows.pipeline import DEFAULT_SOURCE, ValidationFailed, model_name_for, training_flow
from flows.datasets import source_path
from flows.settings import get_settings
from flows.sources import label_of, register_source

WATCH_STATE = "watch.json"
RETRAIN_FLOW, WATCH_FLOW = "retrain-flow", "watch-flow"


class NoPrefectServer(RuntimeError):
    """Schedules were asked for without a Prefect server to keep and run them."""


def run_training(source: str, workspace: str | None, trigger: str, lock_wait_s: float = 0.0) -> dict[str, Any]:
    """One training run of `source` with the workspace's configured task runner."""
    ws = get_settings(Path(workspace) if workspace else None).workspace
    return configured(training_flow, ws)(source=source, workspace=str(ws), trigger=trigger, lock_wait_s=lock_wait_s)


def _source_label() -> str:
    """The label of the run's source (flows.sources): a flow run's name never holds a path."""
    p = flow_run.parameters
    settings = get_settings(Path(p["workspace"]) if p.get("workspace") else None)
    return label_of(settings, str(p.get("source") or DEFAULT_SOURCE))


@flow(name=RETRAIN_FLOW, flow_run_name=lambda: f"{flow_run.parameters.get('trigger', 'schedule')}-{_source_label()}")
def retrain_flow(source: str = DEFAULT_SOURCE, workspace: str | None = None, trigger: str = "schedule", lock_wait_s: float = 0.0) -> dict[str, Any]:
    """A retraining run, as deployments start it: the training flow as a subflow."""
    return run_training(source, workspace, trigger, lock_wait_s)


# -- watching a source ---------------------------------------------------------------------------


def read_seen(state_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((state_dir / WATCH_STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def remember_seen(state_dir: Path, source: str, fingerprint: Fingerprint, run_id: str | None) -> None:
    """Record `fingerprint` as the last content of `source` that a run was started for."""
    seen = read_seen(state_dir)
    seen[source] = {**asdict(fingerprint), "run_id": run_id, "seen_at": datetime.now(UTC).isoformat(timespec="seconds")}
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f"{WATCH_STATE}.tmp"
    tmp.write_text(json.dumps(seen, indent=2))
    os.replace(tmp, state_dir / WATCH_STATE)


@task(name="fingerprint", task_run_name="fingerprint-{label}")
def fingerprint_task(path: Path, label: str) -> Fingerprint:
    try:
        return source_fingerprint(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{label}: source not found") from None  # Prefect keeps the message: no path


@flow(name=WATCH_FLOW, flow_run_name=lambda: f"watch-{_source_label()}")
def watch_flow(source: str, workspace: str | None = None, lock_wait_s: float | None = None) -> dict[str, Any]:
    """Start a retraining run of `source` (a label or a path, flows.sources) if its content changed
    since the last look, else nothing.

    The new fingerprint is remembered once a run has judged that content (completed, or stopped
    at validation); a run that failed for another reason (a busy workspace, a crash) leaves it
    unremembered, so the next look tries again.

    Returns:
        {"changed": bool, "fingerprint": ..., "previous": ..., "run": the run's summary or None}
    """
    logger = get_run_logger()
    settings = get_settings(Path(workspace) if workspace else None)
    params = load_params(settings.workspace / "params.yaml")
    source = register_source(settings, source)  # its label from here on: logs and watch.json hold no path
    fingerprint = fingerprint_task(source_path(source, settings, params), source)
    previous = read_seen(settings.state_dir).get(source)
    outcome: dict[str, Any] = {"source": source, "changed": False, "fingerprint": asdict(fingerprint), "previous": previous, "run": None}
    if previous and previous.get("digest") == fingerprint.digest:
        logger.info("%s: content unchanged (%d files, sha256 %s): no run", source, fingerprint.files, fingerprint.digest[:12])
        return outcome
    logger.info("%s: content changed (%d files, sha256 %s): retraining", source, fingerprint.files, fingerprint.digest[:12])
    outcome["changed"] = True
    wait_s = lock_wait_s if lock_wait_s is not None else params.retrain.lock_wait_s
    try:
        outcome["run"] = run_training(source, str(settings.workspace), "data-change", wait_s)
    except ValidationFailed:
        remember_seen(settings.state_dir, source, fingerprint, None)  # a verdict on this content: not again until it changes
        raise
    remember_seen(settings.state_dir, source, fingerprint, outcome["run"].get("run_id"))
    return outcome


# -- deployments and schedules --------------------------------------------------------------------


def require_server() -> str:
    """The Prefect API URL; NoPrefectServer when runs would go to an ephemeral API without a scheduler."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise NoPrefectServer(
            "schedules need a Prefect server, which keeps them and starts their runs: start one with "
            "`medgate server` and set PREFECT_API_URL=http://127.0.0.1:4200/api (the ephemeral API of "
            "`medgate run` runs no scheduler)"
        )
    return str(url)


def deployment_name(workspace: Path, purpose: str) -> str:
    """One deployment per workspace and purpose, e.g. `ct-project-retrain`."""
    return f"{workspace.name}-{purpose}"


def retrain_deployment(workspace: Path, source: str, cron: str | None) -> Any:
    """A deployment of `retrain_flow` on `cron` (None: runs only when started), tagged with its dataset and model name (`source`: a label)."""
    from prefect.deployments.runner import EntrypointType

    params = load_params(workspace / "params.yaml")
    return retrain_flow.to_deployment(
        name=deployment_name(workspace, "retrain"),
        cron=cron,
        parameters={"source": source, "workspace": str(workspace), "trigger": "schedule", "lock_wait_s": params.retrain.lock_wait_s},
        tags=_tags(source, model_name_for(source, params), "schedule"),
        description=f"Retrain {model_name_for(source, params)} on {source} (workspace {workspace})"
        + (f" on cron {cron!r}." if cron else ", when started."),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def watch_deployment(workspace: Path, source: str, interval_s: float) -> Any:
    """A deployment of `watch_flow` every `interval_s` seconds (`source`: a label)."""
    from prefect.deployments.runner import EntrypointType

    params = load_params(workspace / "params.yaml")
    return watch_flow.to_deployment(
        name=deployment_name(workspace, "watch"),
        interval=interval_s,
        parameters={"source": source, "workspace": str(workspace)},
        tags=_tags(source, model_name_for(source, params), "data-change"),
        description=f"Retrain when the content of {source} changes (looks every {interval_s:.0f} s; workspace {workspace}).",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def _tags(source: str, model_name: str, trigger: str) -> list[str]:
    from flows.notify import run_tags

    return ["medgate", *run_tags(model_name, source, trigger)]


def serve_deployments(*deployments: Any) -> None:
    """Register `deployments` with the Prefect server and run their scheduled runs until interrupted."""
    from prefect import serve

    require_server()
    serve(*deployments, print_starting_message=True)


def deploy_to_pool(deployment: Any, pool: str) -> str:
    """Register `deployment` on the work pool `pool` (a `process` pool's workers import `flows.retrain`,
    so each needs medgate installed and the workspace at the same path); returns `<flow>/<deployment>`.

    Raises:
        NoPrefectServer: no Prefect server is configured.
        ValueError: the pool does not exist (Prefect's message names it).
    """
    from prefect import deploy

    require_server()
    deploy(deployment, work_pool_name=pool, build=False, push=False, print_next_steps_message=False, ignore_warnings=True)
    return str(deployment.full_name)


def list_schedules(next_runs: int = 3) -> list[dict[str, Any]]:
    """medgate's deployments on the Prefect server: schedules, whether served, next scheduled runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    require_server()
    rows = []
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW, WATCH_FLOW])))}
        if not flows:
            return []
        for deployment in client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=list(flows.values())))):
            scheduled = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=next_runs,
            )
            next_times = [r.expected_start_time.isoformat() for r in scheduled if r.expected_start_time]
            rows.append({
                "deployment": f"{flows.get(deployment.flow_id, '?')}/{deployment.name}",
                "schedules": [_describe_schedule(s.schedule) + ("" if s.active else " (paused)") for s in deployment.schedules],
                "paused": deployment.paused,
                "served": str(getattr(deployment.status, "value", deployment.status) or "").lower() == "ready",
                "last_polled": deployment.last_polled.isoformat() if deployment.last_polled else None,
                "parameters": deployment.parameters,
                "next_runs": next_times or _upcoming(deployment.schedules, next_runs),
                # "computed": the server has created no scheduled runs (yet); the times follow from the schedules.
                "next_runs_from": "server" if next_times else "computed",
            })
    return rows


def _upcoming(schedules: list[Any], n: int) -> list[str]:
    """The next `n` times of the active schedules, computed as the server's scheduler would."""
    import asyncio

    from prefect.server.schemas import schedules as server_schedules

    kinds = {"cron": server_schedules.CronSchedule, "interval": server_schedules.IntervalSchedule, "rrule": server_schedules.RRuleSchedule}
    times = []
    for entry in schedules:
        data = entry.schedule.model_dump(exclude_none=True)
        kind = next((k for k in kinds if k in data), None)
        if entry.active and kind:
            times += asyncio.run(kinds[kind](**data).get_dates(n=n))
    return [t.isoformat() for t in sorted(times)[:n]]


def _describe_schedule(schedule: Any) -> str:
    if getattr(schedule, "cron", None):
        return f"cron {schedule.cron} ({schedule.timezone or 'UTC'})"
    if getattr(schedule, "interval", None):
        return f"every {schedule.interval.total_seconds():.0f} s"
    return str(schedule)
