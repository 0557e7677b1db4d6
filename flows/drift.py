"""Drift: a run's dataset against the data the production model trained on.

`drift_task` compares the manifests (components.data.drift); `mark_drift` records a run whose
dataset drifted beyond a bound; with `drift.require_retraining`, `read_retraining` turns the latest
such record into the gate's `drift retrained_since_drift` check on every promotion of that model name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from sqlalchemy.orm import Session

from components.config import DriftConfig, Params
from components.stages.gate import RetrainingRequirement
from flows.settings import Settings
from flows.workspace import INGEST_DIR, tracked_file
from registry import repository as repo
from registry.errors import NotFoundError

if TYPE_CHECKING:
    from components.data.drift import DriftReport

@task(name="drift")
def drift_task(settings: Settings, params: Params, name: str, baseline: tuple[int, str] | None, manifest: Path) -> tuple[Any, str]:
    return drift_against(settings, params, name, baseline, manifest)


def production_baseline(session: Session, name: str) -> tuple[int, str] | None:
    """(version, dataset version) of the production model `name`, or None."""
    champion = repo.get_champion(session, name)
    return (champion.version, champion.dataset_version) if champion is not None else None


def drift_against(settings: Settings, params: Params, name: str, baseline: tuple[int, str] | None,
                  manifest: Path) -> tuple[DriftReport | None, str]:
    """Drift of `manifest` against the production model's training data, or (None, why not)."""
    import pandas as pd

    from components.data.drift import compare_manifests

    if baseline is None:
        return None, f"no production model named {name} yet: nothing to compare with"
    version, dataset_version = baseline
    # The baseline's manifest has the name of this one, in the ingest folder at the baseline's version.
    found = tracked_file(settings.workspace, INGEST_DIR, dataset_version, manifest.name)
    if found is None:
        return None, (f"the training data of {name} v{version} (dataset {dataset_version[:12]}) is neither "
                      f"{INGEST_DIR} nor in the workspace's DVC cache (dvc pull restores it)")
    label = f"{name} v{version} training data (dataset {dataset_version[:12]})"
    return compare_manifests(pd.read_parquet(found), pd.read_parquet(manifest), params.drift, label), ""


def describe_drift(checks: list[dict[str, Any]]) -> str:
    """`class_share 0.35 > 0.2, ...`: the exceeded drift statistics of a report or a drift event."""
    return ", ".join(f"{c['name']} {c['value']:g} > {c['bound']:g}" for c in checks)


def mark_drift(
    session: Session, *, name: str, baseline_version: int, run_id: int, run_uid: str, dataset_id: int,
    dataset_version: str, drift: DriftReport, cfg: DriftConfig, actor: str,
) -> dict[str, Any]:
    """The summary's `drift` field of a run; a dataset that drifted beyond a bound from the training
    data of production `name` v`baseline_version` is also recorded (drift event and a `drift` audit
    row on that version, by `actor`). Flushes only."""
    exceeded = [{"name": c.name, "value": c.value, "bound": c.bound, "detail": c.detail} for c in drift.exceeded]
    required = bool(exceeded) and cfg.require_retraining
    marked = {"against": drift.baseline, "exceeded": exceeded, "retraining_required": required}
    if not exceeded:
        return marked
    baseline = repo.get_version(session, name, baseline_version)
    if baseline is None:
        raise NotFoundError(f"{name} has no version {baseline_version}")
    follows = (
        "retraining required: no model of this name trained on older data is promoted (drift.require_retraining)"
        if required else "validation fails on it (drift.require_retraining is off)"
    )
    repo.record_drift(
        session, run_id=run_id, dataset_id=dataset_id, baseline_version_id=baseline.id, checks=exceeded, actor=actor,
        reason=f"run {run_uid}: dataset {dataset_version[:12]} drifted beyond its bound from this model's training data "
               f"({describe_drift(exceeded)}); {follows}",
    )
    return marked


def read_retraining(session: Session, name: str, cfg: DriftConfig, trained_version: str) -> RetrainingRequirement | None:
    """What drift requires of a model of `name` trained on dataset `trained_version`: the latest drift
    event of `name` when `drift.require_retraining` is set, else None (no check)."""
    event = repo.latest_drift(session, name) if cfg.require_retraining else None
    if event is None:
        return None
    drifted = event.dataset.version
    return RetrainingRequirement(
        drifted, repo.dataset_seq(session, drifted) or event.dataset_id, trained_version,
        repo.dataset_seq(session, trained_version), describe_drift(event.checks),
    )
