"""A small hyperparameter sweep: a grid of `train` params, trials fanned out over the task runner.

`sweep_flow` ingests and validates the source and reproduces `prepare` as the training flow does,
then trains every combination of the grid on that prepared data, each trial in its own folder
(`runs/sweeps/<id>/trial-<n>`) with the train stage's own command, as tasks submitted to the
flow's task runner (`orchestration.task_runner`: a local or remote Dask cluster fans them out).
Trials are ranked by validation AUC, never test metrics, which stay for the gate. The best
trial's params are written into `params.yaml` (comments kept, as `dvc exp apply` does) and its
finished checkpoint into the train stage's checkpoint folder, and the training flow then runs with trigger
`sweep`: DVC sees the new params, the train stage resumes that checkpoint instead of training
again, and evaluate, the gate, packaging and promotion proceed as for any run.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.futures import wait

from components.config import Params, TrainConfig, default_params, load_params
from components.data.artifacts import CHECKPOINT_FILE, TRAINING_FILE
from flows.children import start_child, stop_child
from flows.datasets import ingest_and_version, validate_task
from flows.distributed import configured
from flows.lock import workspace_lock
from flows.pipeline import ValidationFailed, training_flow
from flows.settings import get_settings
from flows.sources import register_source
from flows.stages import prepare_task
from flows.workspace import stage_dir, tool_env


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """`["learning_rate=0.001,0.003", "model.width=16,32"]` -> {key: values}, keys checked against the train section."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--grid {spec!r}: expected KEY=V1,V2 (a key of params.yaml's train section)")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    for overrides in trials_of(grid):
        try:
            TrainConfig.model_validate(apply_overrides(default_params().train.model_dump(), overrides))
        except Exception as exc:
            raise ValueError(f"--grid: {overrides} is not a valid train section: {exc}") from None
    return grid


def trials_of(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def apply_overrides(section: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `section` with dotted keys ("model.width") set."""
    out = json.loads(json.dumps(section))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@task(name="trial", task_run_name="trial-{number}")
def trial_task(workspace: str, number: int, params: dict[str, Any], trial_dir: str) -> dict[str, Any]:
    """Train one trial with the train stage's module on the workspace's prepared data."""
    folder, data = Path(trial_dir), stage_dir(Path(workspace), "prepare")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = start_child(  # dies with this process, as a `dvc repro` does
        [sys.executable, "-m", "components.stages.train", "--params", str(folder / "params.yaml"), "--data", str(data),
         "--out", str(folder / "train"), "--state", str(folder / "state")],
        cwd=workspace, env={**tool_env(), "OMP_WAIT_POLICY": "PASSIVE"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        stop_child(proc)
        raise
    (folder / "train.log").write_text(stdout + stderr)
    if proc.returncode:
        raise RuntimeError(f"trial {number} failed (exit {proc.returncode}); log {folder / 'train.log'}:\n{stderr[-2000:]}")
    training = json.loads((folder / "train" / TRAINING_FILE).read_text())
    return {"val_auc": float(training["best_val_auc"]), "best_epoch": training["best_epoch"], "dir": str(folder),
            "worker": f"{socket.gethostname()}:{os.getpid()}"}


def _prepare(source: str, workspace: str, params: Params) -> None:
    """Ingest, version and validate the source, then reproduce prepare: what every trial trains on."""
    settings = get_settings(Path(workspace))
    dataset, *_ = ingest_and_version(source, settings, params, lambda step, *args: step(*args))
    validation = validate_task(dataset, params, settings.runs_dir / "sweeps" / "validate", settings.state_dir)
    if not validation.success:
        raise ValidationFailed(validation)
    prepare_task(settings)


def apply_best(workspace: Path, overrides: dict[str, Any], state_dir: Path) -> None:
    """Write the best trial's train params into params.yaml (comments kept) and its checkpoint(s) into
    the train stage's checkpoint folder (its persistent output), where the train stage resumes it."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(workspace / "params.yaml") as doc:
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node = doc.setdefault("train", {})
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    target = stage_dir(workspace, "train", persist=True)
    # One checkpoint, or an ensemble's one per member (member-<i>/checkpoint.pt).
    for checkpoint in [state_dir / CHECKPOINT_FILE, *sorted(state_dir.glob(f"member-*/{CHECKPOINT_FILE}"))]:
        if checkpoint.is_file():
            (target / checkpoint.relative_to(state_dir)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(checkpoint, target / checkpoint.relative_to(state_dir))


@flow(name="sweep-flow", flow_run_name=lambda: f"sweep-{uuid.uuid4().hex[:6]}")
def sweep_flow(source: str, workspace: str, grid: dict[str, list[Any]], lock_wait_s: float = 0.0) -> dict[str, Any]:
    """Train each combination of `grid`; the best by validation AUC goes through the training flow's gate.

    Returns:
        {"trials": [{trial, overrides, val_auc, best_epoch}], "best": the best of them, "run": the training run's summary}
    """
    logger = get_run_logger()
    ws = get_settings(Path(workspace)).workspace
    sweep_dir = ws / "runs" / "sweeps" / uuid.uuid4().hex[:8]
    source = register_source(get_settings(ws), source)  # its label from here on (flows.sources)
    with workspace_lock(ws / ".medgate", f"sweep of {len(trials_of(grid))} trials on {source}", wait_s=lock_wait_s):
        params = load_params(ws / "params.yaml")
        _prepare(source, str(ws), params)
        base = json.loads(params.model_dump_json(by_alias=True))
        trials = trials_of(grid)
        futures = [
            trial_task.submit(str(ws), n, {**base, "train": apply_overrides(base["train"], overrides)}, str(sweep_dir / f"trial-{n}"))
            for n, overrides in enumerate(trials)
        ]
        wait(futures)
        results = [{"trial": n, "overrides": o, **f.result()} for n, (o, f) in enumerate(zip(trials, futures))]
        best = max(results, key=lambda r: r["val_auc"])
        (sweep_dir / "trials.json").write_text(json.dumps(results, indent=2))
        logger.info("best of %d trials: %s (validation AUC %.4f)", len(results), best["overrides"], best["val_auc"])
        apply_best(ws, best["overrides"], Path(best["dir"]) / "state")
    run = configured(training_flow, ws)(source=source, workspace=str(ws), trigger="sweep", lock_wait_s=lock_wait_s)
    return {"trials": results, "best": best, "run": run, "sweep_dir": str(sweep_dir)}
