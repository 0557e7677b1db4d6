"""What each console page shows, gathered from the registry (registry.views) and the run's summary,
plus the template filters that format it. No web framework here: the functions take a database
session and return the template's context.
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flows.cards import recorded_gate
from registry import repository as repo, views
from registry.models import AWAITING_APPROVAL, ApprovalStatus, Dataset, ModelVersion

PAGE_SIZE = 50
AUDIT_PAGE_SIZE = 100
#: The metrics the version lists show (every numeric metric is on the version and compare pages).
KEY_METRICS = ("auc", "sensitivity", "specificity", "accuracy", "ece")
#: The reports a run page links to, served by the console: name -> (title, where the summary names the file).
RUN_FILES = {"quality": ("data-quality report", ("validation", "report")), "report": ("run report", ("report",))}


# -- template filters ------------------------------------------------------------------------------


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


def num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def short(value: str | None, width: int = 12) -> str:
    return (value or "-")[:width]


def seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    total = (end - start).total_seconds()
    return f"{total:.0f} s" if total < 120 else f"{total / 60:.1f} min"


FILTERS = {"when": when, "num": num, "short": short}


# -- shared pieces ---------------------------------------------------------------------------------


def stage_of(stage: str, approval: str | None) -> str:
    """The stage a person sees: a candidate with a pending approval is awaiting_approval."""
    return AWAITING_APPROVAL if approval == ApprovalStatus.PENDING and stage == "candidate" else stage


def gate_verdict(promote: bool | None, approval: str | None) -> str:
    if promote is None:
        return "-"
    if not promote:
        return "refused"
    return "passed, awaiting approval" if approval == ApprovalStatus.PENDING else "passed"


def prefect_link(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI, when a Prefect server is set (PREFECT_UI_URL or PREFECT_API_URL)."""
    if not flow_run_id:
        return None
    ui = os.environ.get("PREFECT_UI_URL") or (os.environ.get("PREFECT_API_URL") or "").removesuffix("/").removesuffix("/api")
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


def pages(total: int, page: int, size: int) -> dict[str, int]:
    return {"page": max(page, 1), "last": max(1, math.ceil(total / size)), "total": total}


def numeric(metrics: dict[str, Any] | None) -> dict[str, float]:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# -- pages -----------------------------------------------------------------------------------------


def runs_page(session: Session, filters: dict[str, str], page: int) -> dict[str, Any]:
    quality = {"passed": True, "failed": False}.get(filters.get("quality", ""))
    rows, total = views.run_rows(session, limit=PAGE_SIZE, offset=(max(page, 1) - 1) * PAGE_SIZE, **_run_filters(filters, quality))
    return {"rows": rows, "filters": filters, "choices": views.run_choices(session), **pages(total, page, PAGE_SIZE)}


def _run_filters(filters: dict[str, str], quality: bool | None) -> dict[str, Any]:
    return {"status": filters.get("status") or None, "trigger": filters.get("trigger") or None,
            "model": filters.get("model") or None, "quality": quality, "gate": filters.get("gate") or None}


def run_page(session: Session, run_uid: str) -> dict[str, Any] | None:
    run = repo.get_run(session, run_uid)
    if run is None:
        return None
    summary = run.summary or {}
    mv = session.scalars(select(ModelVersion).where(ModelVersion.run_id == run.id)).first()
    version = views.version_rows(session, mv.name, [mv.version])[0] if mv is not None else None
    gate = recorded_gate(session, mv) if mv is not None else None
    validation = summary.get("validation") or {}
    drift = validation.get("drift")
    timings = summary.get("timings_s") or {}
    longest = max(timings.values(), default=0) or 1
    return {
        "run": run, "summary": summary, "dataset": run.dataset, "version": version,
        "gate": gate or summary.get("gate"), "validation": validation,
        "drift_checks": drift if isinstance(drift, list) else [], "drift_note": drift if isinstance(drift, str) else "",
        "drift_marked": summary.get("drift") or {},
        "timings": [(name, s, round(100 * s / longest)) for name, s in timings.items()],
        "metrics": numeric(summary.get("metrics")), "prefect": prefect_link(run.prefect_flow_run_id),
        "files": {kind: title for kind, (title, _) in RUN_FILES.items() if run_file(summary, kind) is not None},
        "duration": seconds(run.started_at, run.finished_at),
    }


def run_file(summary: dict[str, Any], kind: str) -> Path | None:
    """The file of `kind` (RUN_FILES) the summary names, where it exists."""
    value: Any = summary
    for key in RUN_FILES[kind][1]:
        value = value.get(key) if isinstance(value, dict) else None
    return Path(value) if isinstance(value, str) and value and Path(value).is_file() else None


def models_page(session: Session) -> dict[str, Any]:
    return {"rows": views.model_rows(session)}


def model_page(session: Session, name: str) -> dict[str, Any] | None:
    rows = views.version_rows(session, name)
    if not rows:
        return None
    history, _ = views.audit_rows(session, model=name, actions=views.PRODUCTION_ACTIONS, limit=200)
    return {"name": name, "rows": rows, "history": history, "key_metrics": KEY_METRICS,
            "awaiting": [r for r in rows if r["approval"] == ApprovalStatus.PENDING]}


def version_page(session: Session, name: str, number: int) -> dict[str, Any] | None:
    rows = views.version_rows(session, name, [number])
    if not rows:
        return None
    mv = repo.get_version(session, name, number)
    return {"name": name, "v": rows[0], "gate": recorded_gate(session, mv), "metrics": numeric(rows[0]["metrics"])}


def compare_page(session: Session, name: str, a: int, b: int) -> dict[str, Any] | None:
    found = {r["version"]: r for r in views.version_rows(session, name, [a, b])}
    if a not in found or b not in found:
        return None
    left, right = found[a], found[b]
    ma, mb = numeric(left["metrics"]), numeric(right["metrics"])
    metrics = [(k, ma.get(k), mb.get(k), mb[k] - ma[k] if k in ma and k in mb else None) for k in sorted(set(ma) | set(mb))]
    keyed = [{(c["kind"], c["metric"], c["comparison"]): c for c in (r["checks"] or [])} for r in (left, right)]
    checks = [(" ".join(key), keyed[0].get(key), keyed[1].get(key)) for key in sorted(set(keyed[0]) | set(keyed[1]))]
    fields = [(f.replace("_", " "), left[f], right[f]) for f in ("stage", "dataset_version", "test_data_version", "bento_tag")]
    return {"name": name, "a": left, "b": right, "metrics": metrics, "checks": checks, "fields": fields,
            "versions": [r["version"] for r in views.version_rows(session, name)]}


def data_page(session: Session) -> dict[str, Any]:
    return {"rows": views.dataset_rows(session)}


def dataset_report(session: Session, dataset_id: int) -> Path | None:
    dataset = session.get(Dataset, dataset_id)
    path = Path(dataset.report_path) if dataset is not None and dataset.report_path else None
    return path if path is not None and path.is_file() else None


def audit_page(session: Session, filters: dict[str, str], page: int) -> dict[str, Any]:
    chosen = {k: filters.get(k) or None for k in ("model", "actor", "action")}
    rows, total = views.audit_rows(session, limit=AUDIT_PAGE_SIZE, offset=(max(page, 1) - 1) * AUDIT_PAGE_SIZE, **chosen)
    return {"rows": rows, "filters": filters, "choices": views.audit_choices(session), **pages(total, page, AUDIT_PAGE_SIZE)}
