"""dvc.yaml's stages as Prefect tasks: prepare, train, baseline and evaluate, each running its own
`dvc repro` stage; `dvc_status`, which finds an unchanged pipeline at once; `push`, which sends the
dataset and the stage outputs to the DVC remote. And the stage outputs the flow reads.

DVC decides what runs: a stage whose inputs, code and params are unchanged is skipped (reused).
"""

from __future__ import annotations

import json
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from components.data.artifacts import METRICS_FILE, TRAINING_FILE, WEIGHTS_FILE, file_sha256
from flows.settings import Settings
from flows.workspace import StageRun, push_outputs, reproduce_stage, stage_dir, stages_up_to_date


@task(name="dvc_status")
def dvc_status_task(settings: Settings) -> bool:
    """Whether `dvc status` finds every stage and the tracked dataset unchanged."""
    return stages_up_to_date(settings.workspace)


def _stage_task(stage: str) -> Task[[Settings], StageRun]:
    """The task named `stage` that runs dvc.yaml's stage `stage` alone (`flows.workspace.reproduce_stage`)."""
    def run_stage(settings: Settings) -> StageRun:
        return reproduce_stage(settings.workspace, stage)

    # Prefect keys a task by its function's name and source, which the four stages share: each gets
    # its own name, and no cache (its inputs are the same settings; DVC decides what is reused).
    run_stage.__qualname__ = run_stage.__name__ = f"{stage}_task"
    return task(run_stage, name=stage, cache_policy=NO_CACHE)


prepare_task = _stage_task("prepare")
train_task = _stage_task("train")
baseline_task = _stage_task("baseline")
evaluate_task = _stage_task("evaluate")


# I/O tasks retry with exponential back-off (2, 4 s ...); stages that train or evaluate never do:
# a failure there is a fact about the data or the code, and the run must fail on it.
@task(name="push", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def push_task(settings: Settings) -> None:
    push_outputs(settings.workspace)


def read_evaluation(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The candidate's test metrics (evaluate) and its training run's figures (train)."""
    ws = settings.workspace
    metrics = json.loads((stage_dir(ws, "evaluate") / METRICS_FILE).read_text())
    return metrics, json.loads((stage_dir(ws, "train") / TRAINING_FILE).read_text())


def weights_sha256(settings: Settings) -> str:
    """sha256 of the trained weights: the candidate's identity in the registry."""
    return file_sha256(stage_dir(settings.workspace, "train") / WEIGHTS_FILE)
