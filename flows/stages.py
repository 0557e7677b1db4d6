"""dvc.yaml's stages as Prefect tasks: prepare, train, baseline and evaluate, each running its own
`dvc repro` stage; `dvc_status`, which finds an unchanged pipeline at once; `push`, which sends the
dataset and the stage outputs to the DVC remote.

DVC decides what runs: a stage whose inputs, code and params are unchanged is skipped (reused).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prefect import Task, task
from prefect.futures import wait
from prefect.tasks import exponential_backoff

from components.config import Params
from components.data.artifacts import METRICS_FILE, TRAINING_FILE, WEIGHTS_FILE, file_sha256
from flows.settings import Settings
from flows.workspace import StageRun, WorkspaceError, push_outputs, reproduce_stage, stage_dir, stage_waves, stages_up_to_date

if TYPE_CHECKING:
    from flows.recording import RunRecorder


@task(name="dvc_status")
def dvc_status_task(settings: Settings) -> bool:
    """Whether `dvc status` finds every stage and the tracked dataset unchanged."""
    return stages_up_to_date(settings.workspace)


@task(name="prepare")
def prepare_task(settings: Settings) -> StageRun:
    return reproduce_stage(settings.workspace, "prepare")


@task(name="train")
def train_task(settings: Settings) -> StageRun:
    return reproduce_stage(settings.workspace, "train")


@task(name="baseline")
def baseline_task(settings: Settings) -> StageRun:
    return reproduce_stage(settings.workspace, "baseline")


@task(name="evaluate")
def evaluate_task(settings: Settings) -> StageRun:
    return reproduce_stage(settings.workspace, "evaluate")


# I/O tasks retry with exponential back-off (2, 4 s ...); stages that train or evaluate never do:
# a failure there is a fact about the data or the code, and the run must fail on it.
@task(name="push", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def push_task(settings: Settings) -> None:
    push_outputs(settings.workspace)


def reproduce(
    settings: Settings, params: Params, record: RunRecorder, waves: Sequence[Sequence[Task]], up_to_date: bool
) -> list[StageRun]:
    """Run the stage tasks of `waves` (dvc.yaml's stages, upstream first, as `stage_waves` orders them).
    None runs when `dvc status` finds all up to date (or found it already this run: `up_to_date`).

    With `orchestration.task_runner` threads or dask, the stages of one wave (independent of each
    other, e.g. train and baseline) run at once on the flow's task runner; otherwise one by one.

    Raises:
        WorkspaceError: the workspace's dvc.yaml has other stages or dependencies than `waves`.
    """
    ws = settings.workspace
    names = [[t.name for t in wave] for wave in waves]
    if up_to_date or record.timed(dvc_status_task, settings):
        return [StageRun(stage, 0.0, True) for wave in names for stage in wave]
    if names != (found := stage_waves(ws)):
        raise WorkspaceError(f"{ws / 'dvc.yaml'}: its stages in order of dependence are {found}; the flow runs {names}")
    if params.orchestration.task_runner == "sequential":
        return [record.timed(stage_task, settings) for wave in waves for stage_task in wave]
    runs: list[StageRun] = []
    for wave in waves:
        futures = [stage_task.submit(settings) for stage_task in wave]
        wait(futures)  # all of a wave finish (or fail) before the flow goes on or stops
        for future in futures:
            runs.append(future.result())
            record.add_seconds(runs[-1].stage, runs[-1].seconds)
    return runs


def read_evaluation(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The candidate's test metrics (evaluate) and its training run's figures (train)."""
    ws = settings.workspace
    metrics = json.loads((stage_dir(ws, "evaluate") / METRICS_FILE).read_text())
    return metrics, json.loads((stage_dir(ws, "train") / TRAINING_FILE).read_text())


def weights_sha256(settings: Settings) -> str:
    """sha256 of the trained weights: the candidate's identity in the registry."""
    return file_sha256(stage_dir(settings.workspace, "train") / WEIGHTS_FILE)
