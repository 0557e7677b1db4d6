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
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from components.artifacts import IngestedDataset, ValidationResult, to_dict
from components.config import Params, load_params
from components.gate import Check
from flows.cards import PACKAGING_NOTE, render_card, write_card
from flows.promotion import evaluate_gate, json_safe, prepared_data_version, read_champion, without_none
from flows.settings import Settings, get_settings
from flows.workspace import StageRun, dvc_lock_hash, ensure_workspace, pipeline_stages, reproduce_stage, track_dataset
from registry import repository as repo
from registry.db import make_session_factory, upgrade_database

DEFAULT_SOURCE = "embedded"
DEFAULT_MODEL_NAME = "ct-lesion"
ACTOR = "medgate-flow"


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
    stem = Path(source.rstrip("/")).name.split(".")[0]
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
    from components.cohort import generate_cohort
    from components.ingest import ingest_source

    ws = settings.workspace
    if source == DEFAULT_SOURCE:
        cohort_dir = ws / "data" / "source" / "default-cohort"
        if not (cohort_dir / "labels.csv").exists():
            generate_cohort(cohort_dir, params.cohort)
        path: str | Path = cohort_dir
    else:
        path = source
    out_dir = ws / "data" / "ingest"
    shutil.rmtree(out_dir, ignore_errors=True)
    return ingest_source(path, out_dir, params.ingest, salt=settings.deid_salt, show_progress=True)


@task(name="version-dataset", retries=2, retry_delay_seconds=2)
def version_task(settings: Settings) -> str:
    return track_dataset(settings.workspace, "data/ingest")


@task(name="validate")
def validate_task(dataset: IngestedDataset, params: Params, out_dir: Path) -> ValidationResult:
    from components.validate import validate_manifest

    return validate_manifest(dataset.manifest, params.validate_, out_dir, list(dataset.problems))


@task(name="dvc-stage")
def stage_task(settings: Settings, stage: str) -> StageRun:
    return reproduce_stage(settings.workspace, stage)


@task(name="package", retries=1, retry_delay_seconds=2)
def package_task(
    settings: Settings, params: Params, name: str, metadata: dict[str, Any], card_files: dict[str, str]
) -> tuple[str, str, str]:
    from components.package import build_bento, save_to_model_store

    model_tag, sha256 = save_to_model_store(settings.workspace / "data" / "train", name, metadata, files=card_files)
    bento_tag = build_bento(model_tag, params.package, labels={"model": name}, serve_cfg=params.serve)
    return model_tag, bento_tag, sha256


@task(name="smoke-test")
def smoke_task(settings: Settings, params: Params, bento_tag: str) -> Check:
    from components.package import smoke_test_bento

    ws = settings.workspace
    predictions = pd.read_csv(ws / "data" / "evaluate" / "predictions.csv", dtype={"image_id": str})
    golden_rows = predictions.head(params.serve.golden_set_size)
    prob_columns = [c for c in predictions.columns if c.startswith("prob_")]
    golden = [(ws / "data" / "ingest" / row["path"], [float(row[c]) for c in prob_columns]) for _, row in golden_rows.iterrows()]
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


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path


@flow(name="training-flow", flow_run_name="train-{source}")
def training_flow(source: str = DEFAULT_SOURCE, workspace: str | None = None, trigger: str = "manual") -> dict[str, Any]:
    """Take `source` through every stage; returns the run summary (also written to summary.json)."""
    logger = get_run_logger()
    settings = get_settings(Path(workspace) if workspace else None)
    ws = settings.workspace
    ensure_workspace(ws)
    params = load_params(ws / "params.yaml")
    name = model_name_for(source, params)
    upgrade_database(settings.database_url)
    sessions = make_session_factory(settings.database_url)
    with sessions() as session:
        run = repo.start_run(
            session, dataset_id=None, params=params.model_dump(mode="json", by_alias=True),
            git_commit=git_commit(Path(__file__).parent), prefect_flow_run_id=str(flow_run.get_id() or ""), trigger=trigger,
        )
        session.commit()
        run_id, run_uid = run.id, run.run_uid
    run_dir = settings.runs_dir / run_uid
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"run_id": run_uid, "model_name": name, "trigger": trigger, "status": "running"}
    dataset_id = None

    def timed(stage: str, fn, *args):
        started = time.monotonic()
        out = fn(*args)
        timings[stage] = round(time.monotonic() - started, 2)
        return out

    try:
        dataset = timed("ingest", ingest_task, source, settings, params)
        version = timed("version", version_task, settings)
        summary["dataset"] = {"source": source, "version": version, "kind": dataset.kind, "images": dataset.num_images, "patients": dataset.num_patients, "skipped_inputs": len(dataset.problems)}
        validation = timed("validate", validate_task, dataset, params, run_dir / "validate")
        summary["validation"] = {"success": validation.success, "report": str(validation.report_html), "failed_expectations": list(validation.failed_expectations)}
        with sessions() as session:
            dataset_id = repo.record_dataset(
                session, source=source, version=version, kind=dataset.kind, num_images=dataset.num_images,
                num_patients=dataset.num_patients, counts=validation.statistics.get("class_counts", {}),
                class_names=list(dataset.class_names), validation_success=validation.success, report_path=str(validation.report_html),
            ).id
            session.commit()
        if not validation.success:
            raise ValidationFailed(validation)

        stages = [timed(stage, stage_task, settings, stage) for stage in pipeline_stages(ws)]
        summary["stages_reused"] = [s.stage for s in stages if s.reused]
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
        outcome = timed(
            "gate", evaluate_gate, metrics, test_version, champion, params.gate.policy_for(name), ws, params.evaluate, run_dir / "gate"
        )
        with sessions() as session:
            mv = repo.register_model_version(
                session, name=name, run_id=run_id, dataset_version=version, test_data_version=test_version,
                metrics=json_safe(metrics), artifact_sha256=_weights_sha(ws),
            )
            session.commit()
            version_id, model_version = mv.id, mv.version

        bento_tag = None
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
    except Exception as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        summary["timings_s"] = timings
        summary["summary_path"] = str(run_dir / "summary.json")
        if "metrics" in summary:  # evaluate ran in this run: its evidence (and the gate, if reached) goes in the report
            summary["report"] = _write_report(ws, run_dir, summary, logger)
        _write_summary(run_dir, summary)
        with sessions() as session:
            repo.finish_run(session, run_uid, status=summary["status"], summary=summary, error=summary.get("error"), dataset_id=dataset_id)
            session.commit()
    return summary


def _write_report(ws: Path, run_dir: Path, summary: dict[str, Any], logger) -> str | None:
    """The run's HTML report (components.report); a failure to draw it is logged, never fatal."""
    from components.report import REPORT_FILE, write_report

    try:
        data = ws / "data"
        path = write_report(run_dir / REPORT_FILE, summary, data / "evaluate", data / "train", data / "baseline", summary.get("gate"))
    except Exception as exc:  # the run's outcome must not depend on drawing its report
        logger.warning("run report not written: %s: %s", type(exc).__name__, exc)
        return None
    return str(path)


def _weights_sha(ws: Path) -> str:
    from components.models import WEIGHTS_FILE, file_sha256

    return file_sha256(ws / "data" / "train" / WEIGHTS_FILE)
