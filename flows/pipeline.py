"""The training flow: ingest → validate → prepare/train/evaluate (DVC) → gate → package → promote.

Thin wiring: each task calls one pure component (or DVC) and records what happened in the
registry. A failure anywhere leaves the production model untouched; the run is marked failed
with the stage and cause, and `summary.json` says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.tasks import exponential_backoff
from prefect.runtime import flow_run

from components.data.artifacts import IngestedDataset, ValidationResult
from components.config import Params, load_params
from components.stages.gate import Check
from flows.cards import PACKAGING_NOTE, render_card, write_card
from flows.promotion import evaluate_gate, json_safe, mark_drift, prepared_data_version, read_champion, read_retraining, without_none
from flows.caching import (
    cached_ingest, ingest_key, push_key, pushed_already, remember_ingest, remember_push, unchanged_production,
)
from flows.lock import WorkspaceLock, close_interrupted_run, workspace_lock
from flows.notify import label_flow_run, publish_run
from flows.settings import Settings, get_settings
from flows.datasets import CHARTS_MEMO, DEFAULT_SOURCE, INGEST_DIR, SUITES_MEMO, drift_against, identifiers_for, production_baseline, scan_run, source_path
from flows.workspace import (
    StageRun, configure_remote, default_remote, dvc_lock_hash, ensure_workspace, pipeline_stages, push_outputs, reproduce_stage, stage_waves,
    stages_up_to_date, track_dataset, tracked_version,
)
from registry import repository as repo
from registry.db import make_session_factory, upgrade_database

DEFAULT_MODEL_NAME = "ct-lesion"
ACTOR = "medgate-flow"


RUN_LOG = "flow.log"


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
    """The registry name of models trained on `source`: params' package.model_name, else from the source."""
    if params.package.model_name:
        return params.package.model_name
    if source == DEFAULT_SOURCE:
        return DEFAULT_MODEL_NAME
    stem = Path(source.removeprefix("medmnist:").rstrip("/")).name.split(".")[0]
    return re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-") or "model"


def git_commit(path: Path) -> str | None:
    """The code's git commit, when medgate runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@task(name="ingest")
def ingest_task(source: str, settings: Settings, params: Params) -> IngestedDataset:
    from components.demo.cohort import generate_cohort
    from components.stages.ingest import ingest_source

    ws = settings.workspace
    path = source_path(source, settings, params)
    if source == DEFAULT_SOURCE and not (path / "labels.csv").exists():
        generate_cohort(path, params.cohort)
    out_dir = ws / "data" / "ingest"
    shutil.rmtree(out_dir, ignore_errors=True)
    return ingest_source(path, out_dir, params.ingest, salt=settings.deid_salt, show_progress=True)


# I/O tasks retry with exponential back-off (2, 4 s ...); stages that train or evaluate never do:
# a failure there is a fact about the data or the code, and the run must fail on it.
@task(name="version-dataset", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def version_task(settings: Settings) -> str:
    return track_dataset(settings.workspace, INGEST_DIR)


@task(name="push-data", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def push_task(settings: Settings) -> None:
    push_outputs(settings.workspace)


@task(name="validate")
def validate_task(
    dataset: IngestedDataset, params: Params, out_dir: Path, state_dir: Path, drift: Any = None, drift_note: str = ""
) -> ValidationResult:
    """The validation of `dataset` (components.stages.validate); the suites' outcomes are memoized in `state_dir`."""
    from components.stages.validate import validate_manifest

    return validate_manifest(
        dataset.manifest, params.validate_, out_dir, list(dataset.problems), class_names=params.ingest.class_names,
        drift=drift, drift_note=drift_note, window=(params.prepare.window_level, params.prepare.window_width),
        memo_file=state_dir / SUITES_MEMO,
    )


@task(name="drift")
def drift_task(settings: Settings, params: Params, name: str, baseline: tuple[int, str] | None, manifest: Path) -> tuple[Any, str]:
    return drift_against(settings, params, name, baseline, manifest)


@task(name="phi-scan")
def phi_task(settings: Settings, identifiers: Path, run_dir: Path, model_tag: str | None, bento_tag: str | None) -> tuple[Check, dict[str, Any]]:
    """Every artifact of the run scanned for the source's original identifiers (components.privacy.phi); a finding fails the check."""
    scan = scan_run(settings, identifiers, run_dir, model_tag, bento_tag)
    where = "; ".join(f"{f.file} ({f.kind}{', ' + f.where if f.where else ''})" for f in scan.findings[:10])
    detail = f"{scan.files} files, {scan.bytes} bytes scanned for {scan.identifiers} identifier spellings" + (f"; found in {where}" if where else "")
    check = Check("privacy", "phi_findings", float(len(scan.findings)), 0.0, "<=", "pass" if scan.clean else "fail", detail)
    return check, scan.to_dict()


@task(name="dvc-stage", task_run_name="{stage}")
def stage_task(settings: Settings, stage: str) -> StageRun:
    return reproduce_stage(settings.workspace, stage)


@task(name="package", retries=1, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def package_task(
    settings: Settings, params: Params, name: str, metadata: dict[str, Any], card_files: dict[str, str]
) -> tuple[str, str, str]:
    from components.stages.package import build_bento, save_to_model_store
    from services.settings import settings_for_model

    get_run_logger().info("packaging %s v%s: model store, then bento build", name, metadata.get("model_version"))
    model_tag, sha256 = save_to_model_store(settings.workspace / "data" / "train", name, metadata, files=card_files)
    serving = settings_for_model(model_tag, params.package, params.serve)
    bento_tag = build_bento(serving.to_dict(), labels={"model": name}, name=params.package.model_name)
    return model_tag, bento_tag, sha256


@task(name="smoke-test")
def smoke_task(settings: Settings, params: Params, bento_tag: str) -> Check:
    from components.data.shards import ImageStore
    from services.smoke import smoke_test_bento

    ws = settings.workspace
    predictions = pd.read_csv(ws / "data" / "evaluate" / "predictions.csv", dtype={"image_id": str})
    golden_rows = predictions.head(params.serve.golden_set_size)
    prob_columns = [c for c in predictions.columns if c.startswith("prob_")]
    # The golden images leave their shards as the .npy uploads a client would send.
    with tempfile.TemporaryDirectory() as tmp, ImageStore(ws / "data" / "ingest") as store:
        golden = []
        for i, (_, row) in enumerate(golden_rows.iterrows()):
            (path := Path(tmp) / f"golden-{i}.npy").write_bytes(store.read_bytes(row["path"]))
            golden.append((path, [float(row[c]) for c in prob_columns]))
        result = smoke_test_bento(bento_tag, golden, params.serve.probability_tolerance)
    return Check(
        kind="serving",
        metric=result["metric"],
        value=result["value"],
        threshold=result["threshold"],
        comparison=result["comparison"],
        verdict="pass" if result["passed"] else "fail",
        detail=result.get("detail", ""),
    )


def _attach_run_log(path: Path):
    """Copy the run's log records (flow, tasks, components) to `path`, and move the libraries' records
    and warnings there from the console (flows.logs); returns the function that stops it."""
    import logging

    from flows.logs import library_logs_to

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(where)s: %(message)s"))
    handler.addFilter(lambda r: setattr(r, "where", getattr(r, "task_run_name", None) or getattr(r, "flow_run_name", "")) or True)
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs", "components", "flows")]
    for logger in loggers:
        logger.addHandler(handler)
    detach_libraries = library_logs_to(handler)

    def detach() -> None:
        detach_libraries()
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()

    return detach


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path


def _flow_run_name() -> str:
    """`<trigger>-<dataset>`, e.g. `retrain-pneumoniamnist.npz`: what started the run, on what."""
    p = flow_run.parameters
    return f"{p.get('trigger', 'manual')}-{Path(str(p.get('source') or DEFAULT_SOURCE)).name}"


@flow(name="training-flow", flow_run_name=_flow_run_name)
def training_flow(
    source: str = DEFAULT_SOURCE, workspace: str | None = None, trigger: str = "manual", lock_wait_s: float = 0.0
) -> dict[str, Any]:
    """Take `source` through every stage; returns the run summary (also written to summary.json).

    One run at a time per workspace (flows.lock): another waits up to `lock_wait_s` seconds,
    then is refused with WorkspaceBusy before it records anything.
    """
    settings = get_settings(Path(workspace) if workspace else None)
    ensure_workspace(settings.workspace)
    with workspace_lock(settings.state_dir, f"{trigger} run of {source}", wait_s=lock_wait_s) as lock:
        return _run_training(source, settings, trigger, lock)


def _run_training(source: str, settings: Settings, trigger: str, lock: WorkspaceLock) -> dict[str, Any]:
    logger = get_run_logger()
    ws = settings.workspace
    params = load_params(ws / "params.yaml")
    configure_remote(ws, settings.dvc_remote, settings.dvc_remote_endpoint)
    name = model_name_for(source, params)
    label_flow_run(name, source, trigger)
    upgrade_database(settings.database_url)
    sessions = make_session_factory(settings.database_url)
    with sessions() as session:
        interrupted = close_interrupted_run(session, lock.previous)
    with sessions() as session:
        run = repo.start_run(
            session, dataset_id=None, params=params.model_dump(mode="json", by_alias=True),
            git_commit=git_commit(Path(__file__).parent), prefect_flow_run_id=str(flow_run.get_id() or ""), trigger=trigger,
        )
        session.commit()
        run_id, run_uid = run.id, run.run_uid
    lock.record_run(run_uid)
    run_dir = settings.runs_dir / run_uid
    detach_log = _attach_run_log(run_dir / RUN_LOG)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"run_id": run_uid, "model_name": name, "trigger": trigger, "status": "running"}
    if interrupted:
        summary["closed_interrupted_run"] = interrupted
    dataset_id = None

    def timed(stage: str, fn, *args):
        started = time.monotonic()
        out = fn(*args)
        timings[stage] = round(time.monotonic() - started, 2)
        return out

    try:
        dataset, version, ingest_reused, up_to_date = ingest_and_version(source, settings, params, timed)
        summary["dataset"] = {"source": source, "version": version, "kind": dataset.kind, "images": dataset.num_images, "patients": dataset.num_patients, "skipped_inputs": len(dataset.problems)}
        with sessions() as session:
            baseline = production_baseline(session, name)
        drift, drift_note = timed("drift", drift_task, settings, params, name, baseline, dataset.manifest)
        validation = timed("validate", validate_task, dataset, params, run_dir / "validate", settings.state_dir, drift, drift_note)
        summary["validation"] = {
            "success": validation.success, "report": str(validation.report_html), "failed_expectations": list(validation.failed_expectations),
            "warnings": list(validation.warnings), "drift": drift.to_dict()["checks"] if drift is not None else drift_note,
        }
        with sessions() as session:
            dataset_id = repo.record_dataset(
                session, source=source, version=version, kind=dataset.kind, num_images=dataset.num_images,
                num_patients=dataset.num_patients, counts=validation.statistics.get("class_counts", {}),
                class_names=list(dataset.class_names), validation_success=validation.success, report_path=str(validation.report_html),
            ).id
            if drift is not None and baseline is not None:
                summary["drift"] = mark_drift(
                    session, name=name, baseline_version=baseline[0], run_id=run_id, run_uid=run_uid, dataset_id=dataset_id,
                    dataset_version=version, drift=drift, cfg=params.drift, actor=ACTOR,
                )
            session.commit()
        if not validation.success:
            raise ValidationFailed(validation)
        # Identifiers the source is known to hold (the embedded cohort's): none may reach the dataset
        # or its report before anything trains on them, nor any artifact before promotion (below).
        if (identifiers := identifiers_for(source, settings, params)) is not None:
            _, summary["phi_scan"] = timed("phi_scan", phi_task, settings, identifiers, run_dir, None, None)
            if not summary["phi_scan"]["clean"]:
                raise PhiFound(summary["phi_scan"])

        stages = _reproduce(settings, params, timed, timings, up_to_date)
        summary["stages_reused"] = ["ingest"] * ingest_reused + ["validate"] * validation.suites_reused + [s.stage for s in stages if s.reused]
        if remote := default_remote(ws):
            summary["data_remote"] = remote
            if pushed_already(settings.state_dir, key := push_key(ws)):
                summary["stages_reused"].append("push")
            else:
                timed("push", push_task, settings)
                remember_push(settings.state_dir, key)
        metrics = json.loads((ws / "data" / "evaluate" / "metrics.json").read_text())
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        summary["metrics"] = flat
        summary["training"] = json.loads((ws / "data" / "train" / "training.json").read_text())

        # The test data's version is the prepared splits' DVC hash: the same ingest with other split
        # params is other test data. The gate (shared with `medgate models promote`) re-evaluates a
        # champion that was tested on another version.
        test_version = prepared_data_version(ws) or version
        with sessions() as session:
            champion = read_champion(session, name)
            retraining = read_retraining(session, name, params.drift, version)
            same = unchanged_production(session, name, _weights_sha(ws), version, test_version, params.gate)
            if same is not None:  # this very model is production under this policy: nothing to register or build
                summary.update(reused_production(session, same, params, run_dir), status="completed")
                logger.info("unchanged: %s v%s in production is this model; nothing registered, gated or packaged", name, same.version)
                return summary
        outcome = timed(
            "gate", evaluate_gate, metrics, test_version, champion, params.gate.policy_for(name), ws, params.evaluate, run_dir / "gate",
            retraining,
        )
        with sessions() as session:
            mv = repo.register_model_version(
                session, name=name, run_id=run_id, dataset_version=version, test_data_version=test_version,
                metrics=json_safe(metrics), artifact_sha256=_weights_sha(ws),
            )
            session.commit()
            version_id, model_version = mv.id, mv.version

        model_tag = bento_tag = None
        if outcome.decision.promote:
            metadata = {
                "model_name": name, "model_version": model_version, "dataset_version": version, "run_id": run_uid,
                "operating_threshold": metrics["operating_threshold"], "gate": without_none(outcome.to_dict()), "dvc_lock": dvc_lock_hash(ws),
            }
            with sessions() as session:
                card = render_card(session, repo.get_version(session, name, model_version), params, gate=outcome.to_dict(), notes=(PACKAGING_NOTE,))
            model_tag, bento_tag, _ = timed("package", package_task, settings, params, name, metadata, card.files())
            with sessions() as session:
                repo.set_package(session, version_id, model_tag, bento_tag)
                session.commit()
            outcome = outcome.with_check(timed("smoke_test", smoke_task, settings, params, bento_tag))
        if identifiers is not None:
            phi_check, summary["phi_scan"] = timed("phi_scan_final", phi_task, settings, identifiers, run_dir, model_tag, bento_tag)
            outcome = outcome.with_check(phi_check)
        decision = outcome.decision

        with sessions() as session:
            repo.record_gate_decision(
                session, model_version_id=version_id, promote=decision.promote, checks=json_safe(decision.to_dict()["checks"]),
                champion_version_id=outcome.champion_id, reason=decision.reason,
            )
            session.commit()
            if decision.promote:
                repo.promote_version(session, version_id, actor=ACTOR, reason=decision.reason)
            else:
                repo.reject_version(session, version_id, actor=ACTOR, reason=decision.reason)
            production = repo.get_champion(session, name)
            card_files = write_card(render_card(session, repo.get_version(session, name, model_version), params, gate=outcome.to_dict()), run_dir)
            summary.update(
                gate=outcome.to_dict(), model_version=model_version, bento_tag=bento_tag, model_card=str(card_files["model_card.md"]),
                production={"model": name, "version": production.version if production else None, "bento_tag": production.bento_tag if production else None},
                status="completed",
            )
        logger.info("gate: %s", decision.reason)
        if not summary.get("phi_scan", {}).get("clean", True):
            raise PhiFound(summary["phi_scan"])
    except Exception as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        summary["timings_s"] = timings
        summary["summary_path"] = str(run_dir / "summary.json")
        if "metrics" in summary:  # evaluate ran in this run: its evidence (and the gate, if reached) goes in the report
            summary["report"] = _write_report(ws, run_dir, summary, logger, settings.state_dir / CHARTS_MEMO)
        _write_summary(run_dir, summary)
        with sessions() as session:
            repo.finish_run(session, run_uid, status=summary["status"], summary=summary, error=summary.get("error"), dataset_id=dataset_id)
            session.commit()
        publish_run(summary, settings)
        detach_log()
        sessions.kw["bind"].dispose()  # no pooled connections outlive the run (several runs share a process)
    return summary


def reused_production(session, same, params: Params, run_dir: Path) -> dict[str, Any]:
    """The summary fields of a run whose model is already production (see flows.caching)."""
    decision = repo.latest_gate_decision(session, same.id)
    card_files = write_card(render_card(session, same, params), run_dir)
    return {
        "reused_production": same.version, "model_version": same.version, "bento_tag": same.bento_tag,
        "model_card": str(card_files["model_card.md"]),
        "production": {"model": same.name, "version": same.version, "bento_tag": same.bento_tag},
        "gate": {"promote": True, "reason": f"unchanged: production v{same.version} is this model", "checks": decision.checks if decision else []},
    }


def ingest_and_version(source: str, settings: Settings, params: Params, timed) -> tuple[IngestedDataset, str, bool, bool]:
    """Ingest and version the source, or reuse the last ingest when nothing it depends on changed
    (flows.caching) and DVC finds data/ingest at that ingest's version.

    Returns (dataset, version, reused, all_up_to_date). With a reusable ingest, one `dvc status`
    comes first: when it finds every tracked dataset and stage unchanged (all_up_to_date), data/ingest
    is at its recorded version and no `dvc add` is needed; otherwise `dvc add` says which version it is.
    """
    ws = settings.workspace
    path = source_path(source, settings, params)
    key = ingest_key(path, params.ingest, settings.deid_salt) if path.exists() else None
    cached = cached_ingest(settings.state_dir, key) if key else None
    if cached is not None:
        if tracked_version(ws, INGEST_DIR) == cached[1] and timed("dvc_status", stages_up_to_date, ws):
            return cached[0], cached[1], True, True
        if (version := timed("version", version_task, settings)) == cached[1]:
            return cached[0], version, True, False
        get_run_logger().info("data/ingest changed since it was ingested: ingesting again")
    dataset = timed("ingest", ingest_task, source, settings, params)
    version = timed("version", version_task, settings)
    remember_ingest(settings.state_dir, ingest_key(path, params.ingest, settings.deid_salt), dataset, version)
    return dataset, version, False, False


def _reproduce(settings: Settings, params: Params, timed, timings: dict[str, float], up_to_date: bool) -> list[StageRun]:
    """Reproduce dvc.yaml's stages, upstream first. None run when `dvc status` finds all up to date
    (or found it already this run: `up_to_date`).

    With `orchestration.task_runner` threads or dask, the stages of one wave (independent of each
    other, e.g. train and baseline) run at once on the flow's task runner; otherwise one by one.
    """
    ws = settings.workspace
    if up_to_date or timed("dvc_status", stages_up_to_date, ws):
        return [StageRun(stage, 0.0, True) for stage in pipeline_stages(ws)]
    if params.orchestration.task_runner == "sequential":
        return [timed(stage, stage_task, settings, stage) for stage in pipeline_stages(ws)]
    runs: list[StageRun] = []
    for wave in stage_waves(ws):
        futures = [stage_task.submit(settings, stage) for stage in wave]
        wait(futures)  # all of a wave finish (or fail) before the flow goes on or stops
        for future in futures:
            runs.append(future.result())
            timings[runs[-1].stage] = round(runs[-1].seconds, 2)
    return runs


def _write_report(ws: Path, run_dir: Path, summary: dict[str, Any], logger, charts_memo: Path) -> str | None:
    """The run's HTML report (components.documents.report); a failure to draw it is logged, never fatal."""
    from components.documents.report import REPORT_FILE, write_report

    try:
        data = ws / "data"
        path = write_report(run_dir / REPORT_FILE, summary, data / "evaluate", data / "train", data / "baseline", summary.get("gate"), charts_memo)
    except Exception as exc:  # the run's outcome must not depend on drawing its report
        logger.warning("run report not written: %s: %s", type(exc).__name__, exc)
        return None
    return str(path)


def _weights_sha(ws: Path) -> str:
    from components.data.artifacts import WEIGHTS_FILE, file_sha256

    return file_sha256(ws / "data" / "train" / WEIGHTS_FILE)
