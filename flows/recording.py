"""The record of a training run: its registry rows and its `summary.json`, written here only.

`recording` opens a run: it closes the registry run a kill left behind (flows.lock), starts this
one, and copies the run's log records to `runs/<run>/flow.log`; on leaving, it writes what the run
came to (status, error, stage seconds, the run report) to summary.json and the registry and
publishes it (flows.notify). In between, the flow records through the `RunRecorder` it yields:
`timed` runs a task and keeps its seconds under the task's name (summary.json's `timings_s`), and
every other method writes one step's summary fields and registry rows.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prefect import Task, get_run_logger
from prefect.runtime import flow_run
from sqlalchemy.orm import Session, sessionmaker

from components.config import Params
from components.data.artifacts import IngestedDataset, ValidationResult, write_text_atomically
from components.stages.gate import sign_off
from flows.caching import unchanged_production
from flows.cards import PACKAGING_NOTE, render_card, write_card
from flows.datasets import CHARTS_MEMO
from flows.drift import mark_drift
from flows.lock import WorkspaceLock, close_interrupted_run
from flows.logs import library_logs_to
from flows.notify import publish_run
from flows.settings import Settings
from flows.sources import redact
from flows.workspace import StageRun, stage_dir
from registry import repository as repo
from registry.db import ensure_schema, make_session_factory
from registry.models import AWAITING_APPROVAL, ModelVersion

if TYPE_CHECKING:
    from components.data.drift import DriftReport
    from flows.gate import GateOutcome

ACTOR = "medgate-flow"
RUN_LOG = "flow.log"
SUMMARY_FILE = "summary.json"
T = TypeVar("T")


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None: JSON columns (PostgreSQL's JSONB) refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def without_none(value: Any) -> Any:
    """`json_safe(value)` with None entries left out: BentoML's model metadata refuses None."""
    value = json_safe(value)
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value if v is not None]
    return value


def git_commit(path: Path) -> str | None:
    """The code's git commit, when medgate runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def current_user() -> str | None:
    """Who runs this process (recorded as the run's `triggered_by`), if the system can say."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def attach_run_log(path: Path) -> Callable[[], None]:
    """Copy the run's log records (flow, tasks, components) to `path`, and move the libraries' records
    and warnings there from the console (flows.logs); returns the function that stops it."""
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


class RunRecorder:
    """The registry rows and the summary of one training run (opened by `recording`)."""

    def __init__(
        self, settings: Settings, params: Params, name: str, sessions: sessionmaker[Session], run_id: int, summary: dict[str, Any]
    ):
        self.settings, self.params, self.name, self.sessions = settings, params, name, sessions
        self.run_id, self.run_uid = run_id, str(summary["run_id"])
        self.run_dir = settings.runs_dir / self.run_uid
        self.summary = summary
        self.timings: dict[str, float] = {}
        self._reused: list[str] = []
        self.dataset_id: int | None = None
        self.version_id: int | None = None
        self.model_version: int | None = None
        self.artifact_sha256: str | None = None  # the candidate's model.pt, as registered

    def timed(self, step: Task, *args: Any) -> Any:
        """Run task `step` and keep its seconds under its name (a task run twice: their sum)."""
        started = time.monotonic()
        out = step(*args)
        self.add_seconds(step.name, time.monotonic() - started)
        return out

    def add_seconds(self, name: str, seconds: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 2)

    def read(self, query: Callable[..., T], *args: Any) -> T:
        """`query(session, *args)` in a session of its own (no transaction stays open)."""
        with self.sessions() as session:
            return query(session, *args)

    def ingested(self, source: str, version: str, dataset: IngestedDataset) -> None:
        self.summary["dataset"] = {
            "source": source, "version": version, "kind": dataset.kind, "images": dataset.num_images,
            "patients": dataset.num_patients, "skipped_inputs": len(dataset.problems),
        }

    def validated(
        self, source: str, version: str, dataset: IngestedDataset, validation: ValidationResult,
        drift: DriftReport | None, drift_note: str, baseline: tuple[int, str] | None,
    ) -> None:
        """The validation's verdict; the dataset's registry row; drift beyond a bound marked (flows.drift)."""
        self.summary["validation"] = {
            "success": validation.success, "report": str(validation.report_html), "failed_expectations": list(validation.failed_expectations),
            "warnings": list(validation.warnings), "drift": drift.to_dict()["checks"] if drift is not None else drift_note,
        }
        with self.sessions() as session:
            self.dataset_id = repo.record_dataset(
                session, source=source, version=version, kind=dataset.kind, num_images=dataset.num_images,
                num_patients=dataset.num_patients, counts=validation.statistics.get("class_counts", {}),
                class_names=list(dataset.class_names), validation_success=validation.success, report_path=str(validation.report_html),
            ).id
            if drift is not None and baseline is not None:
                self.summary["drift"] = mark_drift(
                    session, name=self.name, baseline_version=baseline[0], run_id=self.run_id, run_uid=self.run_uid,
                    dataset_id=self.dataset_id, dataset_version=version, drift=drift, cfg=self.params.drift, actor=ACTOR,
                )
            session.commit()

    def phi_scanned(self, scan: dict[str, Any]) -> None:
        self.summary["phi_scan"] = scan

    def reused(self, *stages: str) -> None:
        """Stages skipped because nothing they depend on changed (summary's `stages_reused`, see `reproduced`)."""
        self._reused.extend(stages)

    def reproduced(self, runs: list[StageRun]) -> None:
        """dvc.yaml's stages ran or were reused: from here on the summary lists the stages reused."""
        self.reused(*(run.stage for run in runs if run.reused))
        self.summary["stages_reused"] = self._reused

    def pushed_to(self, remote: str) -> None:
        self.summary["data_remote"] = remote

    def evaluated(self, metrics: dict[str, Any], training: dict[str, Any]) -> None:
        self.summary["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.summary["training"] = training

    def reuse_production(self, weights_sha256: str, dataset_version: str, test_data_version: str) -> bool:
        """Whether the candidate is the production model itself (flows.caching.unchanged_production);
        then the run reports that version as reused and completes, registering nothing."""
        with self.sessions() as session:
            same = unchanged_production(session, self.name, weights_sha256, dataset_version, test_data_version, self.params.gate)
            if same is None:
                return False
            self.summary.update(self._reused_production(session, same), status="completed")
        get_run_logger().info(
            "unchanged: %s v%s in production is this model; nothing registered, gated or packaged", self.name, same.version
        )
        return True

    def _reused_production(self, session: Session, same: ModelVersion) -> dict[str, Any]:
        decision = repo.latest_gate_decision(session, same.id)
        card_files = write_card(render_card(session, same, self.params), self.run_dir)
        return {
            "reused_production": same.version, "model_version": same.version, "bento_tag": same.bento_tag,
            "model_card": str(card_files["model_card.md"]),
            "production": {"model": same.name, "version": same.version, "bento_tag": same.bento_tag},
            "gate": {"promote": True, "reason": f"unchanged: production v{same.version} is this model", "checks": decision.checks if decision else []},
        }

    def register_candidate(self, dataset_version: str, test_data_version: str, metrics: dict[str, Any], weights_sha256: str) -> int:
        """Register the candidate as the next version of the model name; returns its version number."""
        with self.sessions() as session:
            mv = repo.register_model_version(
                session, name=self.name, run_id=self.run_id, dataset_version=dataset_version, test_data_version=test_data_version,
                metrics=json_safe(metrics), artifact_sha256=weights_sha256,
            )
            session.commit()
            self.version_id, self.model_version, self.artifact_sha256 = mv.id, mv.version, mv.artifact_sha256
        return mv.version

    def packaging_card(self, outcome: GateOutcome) -> dict[str, str]:
        """The candidate's model card files for its model store entry (written before the Bento exists)."""
        with self.sessions() as session:
            mv = repo.get_version(session, self.name, self.model_version)
            card = render_card(session, mv, self.params, gate=outcome.to_dict(), notes=(PACKAGING_NOTE,))
        return card.files()

    def packaged(self, model_tag: str, bento_tag: str) -> None:
        with self.sessions() as session:
            repo.set_package(session, self.version_id, model_tag, bento_tag)
            session.commit()

    def decided(self, outcome: GateOutcome, bento_tag: str | None) -> None:
        """The gate's final decision recorded, the candidate promoted or rejected, and its model card written."""
        decision = outcome.decision
        with self.sessions() as session:
            repo.record_gate_decision(
                session, model_version_id=self.version_id, promote=decision.promote, checks=json_safe(decision.to_dict()["checks"]),
                champion_version_id=outcome.champion_id, reason=decision.reason,
            )
            session.commit()
            action = sign_off(decision, self.params.gate.for_model(self.name))
            if action == "promote":
                repo.promote_version(session, self.version_id, actor=ACTOR, reason=decision.reason)
            elif action == "await_approval":
                repo.request_approval(session, self.version_id, actor=ACTOR, reason=f"{decision.reason}; awaits an approver's sign-off")
            else:
                repo.reject_version(session, self.version_id, actor=ACTOR, reason=decision.reason)
            production = repo.get_champion(session, self.name)
            mv = repo.get_version(session, self.name, self.model_version)
            stage = AWAITING_APPROVAL if action == "await_approval" else None
            card_files = write_card(render_card(session, mv, self.params, gate=outcome.to_dict(), stage=stage), self.run_dir)
            self.summary.update(
                gate=outcome.to_dict(), model_version=self.model_version, bento_tag=bento_tag, model_card=str(card_files["model_card.md"]),
                production={"model": self.name, "version": production.version if production else None,
                            "bento_tag": production.bento_tag if production else None},
                status="completed",
            )
            if action == "await_approval":
                self.summary["awaiting_approval"] = self.model_version

    def failed(self, exc: Exception) -> None:
        """The run failed with `exc`: its text, with any source path replaced by its label (flows.sources)."""
        self.summary.update(status="failed", error=redact(self.settings, f"{type(exc).__name__}: {exc}"))

    def finish(self) -> None:
        """Write the summary (with stage seconds and, when evaluate ran, the run report) and finish the registry run."""
        summary = self.summary
        summary["timings_s"] = self.timings
        summary["summary_path"] = str(self.run_dir / SUMMARY_FILE)
        if "metrics" in summary:  # evaluate ran in this run: its evidence (and the gate, if reached) goes in the report
            summary["report"] = self._write_report()
        write_text_atomically(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
        with self.sessions() as session:
            repo.finish_run(session, self.run_uid, status=summary["status"], summary=summary, error=summary.get("error"), dataset_id=self.dataset_id)
            session.commit()
        publish_run(summary, self.settings)

    def _write_report(self) -> str | None:
        """The run's HTML report (components.documents.report); a failure to draw it is logged, never fatal."""
        from components.documents.report import REPORT_FILE, write_report

        ws = self.settings.workspace
        try:
            path = write_report(
                self.run_dir / REPORT_FILE, self.summary, stage_dir(ws, "evaluate"), stage_dir(ws, "train"), stage_dir(ws, "baseline"),
                self.summary.get("gate"), self.settings.state_dir / CHARTS_MEMO,
            )
        except Exception as exc:  # the run's outcome must not depend on drawing its report
            get_run_logger().warning("run report not written: %s: %s", type(exc).__name__, exc)
            return None
        return str(path)


@contextmanager
def recording(settings: Settings, params: Params, name: str, trigger: str, lock: WorkspaceLock) -> Iterator[RunRecorder]:
    """Record a training run of model `name` under `lock` (see the module's docstring).

    The run is `failed`, with the error, when the block raises; the exception goes on.
    """
    ensure_schema(settings.database_url, upgrade=True)  # the flow's first use of a registry migrates it
    sessions = make_session_factory(settings.database_url)
    with sessions() as session:
        interrupted = close_interrupted_run(session, lock.previous)
    with sessions() as session:
        run = repo.start_run(
            session, dataset_id=None, params=params.model_dump(mode="json", by_alias=True),
            git_commit=git_commit(Path(__file__).parent), prefect_flow_run_id=str(flow_run.get_id() or ""), trigger=trigger,
            triggered_by=current_user(),
        )
        session.commit()
        run_id, run_uid = run.id, run.run_uid
    lock.record_run(run_uid)
    summary: dict[str, Any] = {"run_id": run_uid, "model_name": name, "trigger": trigger, "status": "running"}
    if interrupted:
        summary["closed_interrupted_run"] = interrupted
    record = RunRecorder(settings, params, name, sessions, run_id, summary)
    detach_log = attach_run_log(record.run_dir / RUN_LOG)
    try:
        yield record
    except Exception as exc:
        record.failed(exc)
        raise
    finally:
        record.finish()
        detach_log()
        sessions.kw["bind"].dispose()  # no pooled connections outlive the run (several runs share a process)
