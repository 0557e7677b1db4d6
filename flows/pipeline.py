"""The training flow, stage by stage:

    ingest -> version -> drift, validate -> phi_scan -> prepare -> train, baseline -> evaluate -> push
    -> gate -> package -> smoke_test -> phi_scan -> promote

Each stage is one Prefect task of that name (the key of its seconds in summary.json's `timings_s`):
the dataset steps in flows.datasets and flows.drift, dvc.yaml's stages in flows.stages, then
flows.gate, flows.packaging and flows.promotion. Every registry write and the summary go through
flows.recording. A failure anywhere leaves the production model untouched; the run is marked failed
with the stage and cause, and `summary.json` says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.runtime import flow_run

from components.config import Params, load_params
from components.data.artifacts import IngestedDataset, ValidationResult
from flows.caching import push_key, pushed_already, remember_push
from flows.datasets import DEFAULT_SOURCE, ingest_and_version, phi_scan_task, validate_task
from flows.drift import drift_task, production_baseline, read_retraining
from flows.gate import GateOutcome, gate_task, prepared_data_version, read_champion
from flows.lock import WorkspaceLock, workspace_lock
from flows.notify import label_flow_run
from flows.packaging import package_task, smoke_test_task
from flows.promotion import promote_task
from flows.recording import RunRecorder, recording, without_none
from flows.settings import Settings, get_settings
from flows.sources import label_of, register_source
from flows.stages import (
    baseline_task, dvc_status_task, evaluate_task, prepare_task, push_task, read_evaluation, train_task, weights_sha256,
)
from flows.workspace import (
    StageRun, WorkspaceError, configure_remote, default_remote, dvc_lock_hash, ensure_workspace, stage_waves,
)
from registry.errors import PromotionConflict

DEFAULT_MODEL_NAME = "ct-lesion"
# dvc.yaml's stages in waves, upstream first (`_reproduce` checks them against dvc.yaml):
# the stages of one wave are independent of each other and run at once on a threads or dask runner.
STAGE_WAVES = ((prepare_task,), (train_task, baseline_task), (evaluate_task,))
PROMOTION_ATTEMPTS = 3  # gate and promote, again while another workspace on the registry promotes first


class PhiFound(RuntimeError):
    """A run's artifacts hold an original patient identifier; the model was refused (privacy check)."""

    def __init__(self, scan: dict[str, Any]):
        self.scan = scan
        files = sorted({f["file"] for f in scan["findings"]})
        super().__init__(f"patient identifiers found in {len(files)} artifact(s): {', '.join(files[:10])} (kinds only listed in summary.json)")


class ValidationFailed(RuntimeError):
    """The data failed blocking expectations; nothing downstream ran."""

    def __init__(self, result: ValidationResult):
        self.result = result
        failed = "\n  - ".join(result.failed_expectations)
        super().__init__(f"validation failed ({len(result.failed_expectations)} expectation(s)):\n  - {failed}\nreport: {result.report_html}")


def model_name_for(source: str, params: Params) -> str:
    """The registry name of models trained on `source` (a label, flows.sources): params' package.model_name,
    else from the label."""
    if params.package.model_name:
        return params.package.model_name
    if source == DEFAULT_SOURCE:
        return DEFAULT_MODEL_NAME
    stem = Path(source.removeprefix("medmnist:").rstrip("/")).name.split(".")[0]
    return re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-") or "model"


def _flow_run_name() -> str:
    """`<trigger>-<dataset label>`, e.g. `retrain-pneumoniamnist`: what started the run, on what (never a path)."""
    p = flow_run.parameters
    settings = get_settings(Path(p["workspace"]) if p.get("workspace") else None)
    return f"{p.get('trigger', 'manual')}-{label_of(settings, str(p.get('source') or DEFAULT_SOURCE))}"


@flow(name="training-flow", flow_run_name=_flow_run_name)
def training_flow(
    source: str = DEFAULT_SOURCE, workspace: str | None = None, trigger: str = "manual", lock_wait_s: float = 0.0
) -> dict[str, Any]:
    """Take `source` through every stage; returns the run summary (also written to summary.json).

    `source` is a label (flows.sources.register_source: what the commands pass, so that Prefect keeps
    no path), a public dataset's name, or a path, which is registered under its label first: every
    stored place names the source by its label.
    One run at a time per workspace (flows.lock): another waits up to `lock_wait_s` seconds,
    then is refused with WorkspaceBusy before it records anything.
    """
    settings = get_settings(Path(workspace) if workspace else None)
    ensure_workspace(settings.workspace)
    source = register_source(settings, source)
    with workspace_lock(settings.state_dir, f"{trigger} run of {source}", wait_s=lock_wait_s) as lock:
        return _run_training(source, settings, trigger, lock)


def _run_training(source: str, settings: Settings, trigger: str, lock: WorkspaceLock) -> dict[str, Any]:
    """One recorded run (flows.recording) of `source` through the stages; returns its summary."""
    params = load_params(settings.workspace / "params.yaml")
    configure_remote(settings.workspace, settings.dvc_remote, settings.dvc_remote_endpoint)
    name = model_name_for(source, params)
    label_flow_run(name, source, trigger)
    with recording(settings, params, name, trigger, lock) as record:
        dataset, version, up_to_date = _ingest(source, settings, params, record)
        _validate(source, settings, params, record, dataset, version)
        _reproduce(settings, params, record, up_to_date)
        outcome = _gate(settings, params, record, version)
        if outcome is not None:  # else this very model is production under this policy: nothing to register or build
            outcome, model_tag, bento_tag = _package(settings, params, record, outcome, version)
            _promote(settings, params, record, outcome, (source, dataset.class_names), model_tag, bento_tag, version)
    return record.summary


def _ingest(source: str, settings: Settings, params: Params, record: RunRecorder) -> tuple[IngestedDataset, str, bool]:
    """ingest -> version (reused when unchanged: flows.datasets.ingest_and_version); returns the
    dataset, its version, and whether `dvc status` found everything up to date already."""
    dataset, version, reused, up_to_date = ingest_and_version(source, settings, params, record.timed)
    record.ingested(source, version, dataset)
    if reused:
        record.reused("ingest")
    return dataset, version, up_to_date


def _validate(
    source: str, settings: Settings, params: Params, record: RunRecorder, dataset: IngestedDataset, version: str
) -> None:
    """drift -> validate -> phi_scan of the dataset: stops the run on failed expectations or a
    patient identifier found."""
    baseline = record.read(production_baseline, record.name)
    drift, drift_note = record.timed(drift_task, settings, params, record.name, baseline, dataset.manifest)
    validation = record.timed(validate_task, dataset, params, record.run_dir / "validate", settings.state_dir, drift, drift_note)
    record.validated(source, version, dataset, validation, drift, drift_note, baseline)
    if not validation.success:
        raise ValidationFailed(validation)
    if validation.suites_reused:
        record.reused("validate")
    # The source's identifiers (header values, path components: flows.datasets.source_identifiers): none
    # may reach the dataset or its report before anything trains on them, nor any artifact before
    # promotion (phi_scan again).
    _, scan = record.timed(phi_scan_task, settings, params, source, dataset.class_names, record.run_dir, None, None)
    record.phi_scanned(scan)
    if not scan["clean"]:
        raise PhiFound(scan)


def _reproduce(settings: Settings, params: Params, record: RunRecorder, up_to_date: bool) -> None:
    """prepare -> train, baseline -> evaluate (dvc repro), then push to the DVC remote, if one is set.

    No stage runs when `dvc status` finds all up to date (or found it already this run: `up_to_date`).
    With `orchestration.task_runner` threads or dask, the stages of one wave run at once on the
    flow's task runner; otherwise one by one.

    Raises:
        WorkspaceError: the workspace's dvc.yaml has other stages or dependencies than `STAGE_WAVES`.
    """
    ws = settings.workspace
    names = [[stage.name for stage in wave] for wave in STAGE_WAVES]
    if up_to_date or record.timed(dvc_status_task, settings):
        runs = [StageRun(stage, 0.0, True) for wave in names for stage in wave]
    elif names != (found := stage_waves(ws)):
        raise WorkspaceError(f"{ws / 'dvc.yaml'}: its stages in order of dependence are {found}; the flow runs {names}")
    elif params.orchestration.task_runner == "sequential":
        runs = [record.timed(stage, settings) for wave in STAGE_WAVES for stage in wave]
    else:
        runs = []
        for wave in STAGE_WAVES:
            futures = [stage.submit(settings) for stage in wave]
            wait(futures)  # all of a wave finish (or fail) before the flow goes on or stops
            for future in futures:
                runs.append(future.result())
                record.add_seconds(runs[-1].stage, runs[-1].seconds)
    record.reproduced(runs)
    if remote := default_remote(ws):
        record.pushed_to(remote)
        if pushed_already(settings.state_dir, key := push_key(ws)):
            record.reused("push")
        else:
            record.timed(push_task, settings)
            remember_push(settings.state_dir, key)


def _gate(settings: Settings, params: Params, record: RunRecorder, version: str) -> GateOutcome | None:
    """The gate on the candidate evaluate scored, which is then registered; None when the candidate is
    the production model itself (the run reports it reused)."""
    ws = settings.workspace
    metrics, training = read_evaluation(settings)
    record.evaluated(metrics, training)
    # The test data's version is the prepared splits' DVC hash: the same ingest with other split
    # params is other test data. The gate (shared with `medgate models promote`) re-evaluates a
    # champion that was tested on another version.
    test_version = prepared_data_version(ws) or version
    weights = weights_sha256(settings)
    if record.reuse_production(weights, version, test_version):
        return None
    outcome = _gate_against_production(settings, params, record, metrics, test_version, version)
    record.register_candidate(version, test_version, metrics, weights)
    return outcome


def _gate_against_production(
    settings: Settings, params: Params, record: RunRecorder, metrics: dict[str, Any], test_version: str, version: str
) -> GateOutcome:
    """gate_task on the candidate's metrics against the production model of this moment."""
    champion = record.read(read_champion, record.name)
    retraining = record.read(read_retraining, record.name, params.drift, version)
    return record.timed(
        gate_task, metrics, test_version, champion, params.gate.for_model(record.name), settings.workspace, params.evaluate,
        record.run_dir / "gate", retraining,
    )


def _package(
    settings: Settings, params: Params, record: RunRecorder, outcome: GateOutcome, version: str
) -> tuple[GateOutcome, str | None, str | None]:
    """package -> smoke_test of a candidate the gate passed; returns the outcome with the serving check,
    the model tag and the Bento tag (None, None when the gate refused it)."""
    if not outcome.decision.promote:
        return outcome, None, None
    metrics = record.summary["metrics"]
    metadata = {
        "model_name": record.name, "model_version": record.model_version, "dataset_version": version, "run_id": record.run_uid,
        "operating_threshold": metrics["operating_threshold"], "gate": without_none(outcome.to_dict()),
        "prediction": read_evaluation(settings)[0].get("prediction"),  # how evaluate made the probabilities
        "dvc_lock": dvc_lock_hash(settings.workspace),
    }
    model_tag, bento_tag, _ = record.timed(package_task, settings, params, record.name, metadata, record.packaging_card(outcome))
    record.packaged(model_tag, bento_tag)
    smoke = record.timed(smoke_test_task, settings, params, bento_tag, record.artifact_sha256)
    return outcome.with_check(smoke), model_tag, bento_tag


def _promote(
    settings: Settings, params: Params, record: RunRecorder, outcome: GateOutcome, source: tuple[str, tuple[str, ...]],
    model_tag: str | None, bento_tag: str | None, version: str,
) -> None:
    """phi_scan of every artifact for the identifiers of `source` (its label and class names) -> promote
    (or reject) the candidate; the run then fails when an identifier was found.

    Workspaces sharing a registry (one PostgreSQL) may promote the same model name while this run is
    between its gate and its promotion: the registry then refuses the promotion (PromotionConflict),
    and the candidate is gated again against the new production model, keeping its serving and
    privacy checks, up to PROMOTION_ATTEMPTS times.
    """
    phi_check, scan = record.timed(phi_scan_task, settings, params, *source, record.run_dir, model_tag, bento_tag)
    record.phi_scanned(scan)
    outcome = outcome.with_check(phi_check)
    for attempt in range(1, PROMOTION_ATTEMPTS + 1):
        try:
            record.timed(promote_task, record, outcome, bento_tag)
            break
        except PromotionConflict as exc:
            if attempt == PROMOTION_ATTEMPTS:
                raise
            get_run_logger().warning("%s: gating %s v%s again", exc, record.name, record.model_version)
            metrics, _ = read_evaluation(settings)
            regated = _gate_against_production(settings, params, record, metrics, prepared_data_version(settings.workspace) or version, version)
            for check in outcome.decision.checks:
                if check.kind in ("serving", "privacy"):
                    regated = regated.with_check(check)
            outcome = regated
    get_run_logger().info("gate: %s", outcome.decision.reason)
    if not record.summary.get("phi_scan", {}).get("clean", True):
        raise PhiFound(record.summary["phi_scan"])
