"""Read-only queries behind the review console's pages: one query per list, only the columns shown.

Each returns plain dicts (`RowMapping`s), so a page never loads a run's whole summary or params to
list it, and never issues a query per row: the latest gate decision of each version and each
version's approval come in by join.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, and_, distinct, func, or_, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import Session

from registry.models import Approval, AuditEntry, Dataset, GateDecision, ModelVersion, Run, Stage

#: The audit actions that change which version is production (a name's production history).
PRODUCTION_ACTIONS = ("promote", "rollback", "archive")


def _latest_decisions() -> Any:
    """Subquery: the id of each version's latest gate decision."""
    return (
        select(GateDecision.model_version_id, func.max(GateDecision.id).label("decision_id"))
        .group_by(GateDecision.model_version_id)
        .subquery()
    )


def _with_gate(stmt: Select[Any], version_id: Any) -> Select[Any]:
    latest = _latest_decisions()
    return (
        stmt.outerjoin(latest, latest.c.model_version_id == version_id)
        .outerjoin(GateDecision, GateDecision.id == latest.c.decision_id)
        .outerjoin(Approval, Approval.model_version_id == version_id)
    )


def run_rows(
    session: Session,
    *,
    status: str | None = None,
    trigger: str | None = None,
    model: str | None = None,
    quality: bool | None = None,
    gate: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[RowMapping], int]:
    """Runs, newest first, with their dataset, data-quality verdict, model version and gate verdict.

    Args:
        model: runs of this model name (a run that stopped before registering a version counts by
            the model name its summary names).
        quality: the dataset's validation verdict.
        gate: ``promote``, ``refused``, ``awaiting`` (a pending approval) or ``none`` (not gated).

    Returns:
        One page of rows and the number of runs that match.
    """
    model_name = func.coalesce(ModelVersion.name, Run.summary["model_name"].as_string())
    stmt = _with_gate(
        select(
            Run.run_uid, Run.started_at, Run.finished_at, Run.trigger, Run.triggered_by, Run.status,
            Dataset.source.label("dataset_source"), Dataset.version.label("dataset_version"),
            Dataset.validation_success, model_name.label("model_name"), ModelVersion.version.label("model_version"),
            ModelVersion.stage, GateDecision.promote, Approval.status.label("approval"),
        )
        .outerjoin(Dataset, Dataset.id == Run.dataset_id)
        .outerjoin(ModelVersion, ModelVersion.run_id == Run.id),
        ModelVersion.id,
    )
    conditions = []
    if status:
        conditions.append(Run.status == status)
    if trigger:
        conditions.append(Run.trigger == trigger)
    if model:
        conditions.append(model_name == model)
    if quality is not None:
        conditions.append(Dataset.validation_success.is_(quality))
    if gate == "promote":
        conditions.append(and_(GateDecision.promote.is_(True), or_(Approval.status.is_(None), Approval.status != "pending")))
    elif gate == "refused":
        conditions.append(GateDecision.promote.is_(False))
    elif gate == "awaiting":
        conditions.append(Approval.status == "pending")
    elif gate == "none":
        conditions.append(GateDecision.id.is_(None))
    stmt = stmt.where(*conditions)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.execute(stmt.order_by(Run.id.desc()).limit(limit).offset(offset)).mappings().all()
    return list(rows), int(total)


def run_choices(session: Session) -> dict[str, list[str]]:
    """The values the run list's filters offer: triggers and model names seen."""
    triggers = session.scalars(select(distinct(Run.trigger)).order_by(Run.trigger)).all()
    names = session.scalars(select(distinct(ModelVersion.name)).order_by(ModelVersion.name)).all()
    return {"trigger": list(triggers), "model": list(names)}


def model_rows(session: Session) -> list[RowMapping]:
    """One row per model name: its versions, production version and candidates awaiting approval."""
    production = func.max(ModelVersion.version).filter(ModelVersion.stage == Stage.PRODUCTION.value)
    stmt = (
        select(
            ModelVersion.name, func.count(ModelVersion.id).label("versions"), production.label("production"),
            func.count(Approval.id).filter(Approval.status == "pending").label("awaiting"),
            func.max(ModelVersion.created_at).label("latest"),
        )
        .outerjoin(Approval, Approval.model_version_id == ModelVersion.id)
        .group_by(ModelVersion.name)
        .order_by(ModelVersion.name)
    )
    return list(session.execute(stmt).mappings().all())


def version_rows(session: Session, name: str, numbers: Sequence[int] | None = None) -> list[RowMapping]:
    """The versions of `name` (or only `numbers`), newest first, with their latest gate decision and approval."""
    stmt = _with_gate(
        select(
            ModelVersion.id, ModelVersion.name, ModelVersion.version, ModelVersion.stage, ModelVersion.metrics,
            ModelVersion.dataset_version, ModelVersion.test_data_version, ModelVersion.bento_tag, ModelVersion.created_at,
            ModelVersion.promoted_at, Run.run_uid, Run.triggered_by, GateDecision.promote, GateDecision.checks,
            GateDecision.reason.label("gate_reason"), Approval.status.label("approval"), Approval.decided_by,
            Approval.reason.label("approval_reason"),
        ).join(Run, Run.id == ModelVersion.run_id),
        ModelVersion.id,
    ).where(ModelVersion.name == name)
    if numbers is not None:
        stmt = stmt.where(ModelVersion.version.in_(list(numbers)))
    return list(session.execute(stmt.order_by(ModelVersion.version.desc())).mappings().all())


def audit_rows(
    session: Session,
    *,
    model: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    actions: Sequence[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[RowMapping], int]:
    """Audit rows, newest first, with the version number of each; one page and the number that match."""
    stmt = select(
        AuditEntry.id, AuditEntry.at, AuditEntry.actor, AuditEntry.action, AuditEntry.model_name,
        ModelVersion.version, AuditEntry.from_stage, AuditEntry.to_stage, AuditEntry.reason,
    ).outerjoin(ModelVersion, ModelVersion.id == AuditEntry.model_version_id)
    if model:
        stmt = stmt.where(AuditEntry.model_name == model)
    if actor:
        stmt = stmt.where(AuditEntry.actor == actor)
    if action:
        stmt = stmt.where(AuditEntry.action == action)
    if actions is not None:
        stmt = stmt.where(AuditEntry.action.in_(list(actions)))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.execute(stmt.order_by(AuditEntry.id.desc()).limit(limit).offset(offset)).mappings().all()
    return list(rows), int(total)


def audit_choices(session: Session) -> dict[str, list[str]]:
    """The values the audit log's filters offer: model names, actors and actions seen."""
    return {
        column: [v for v in session.scalars(select(distinct(attr)).order_by(attr)).all() if v]
        for column, attr in (("model", AuditEntry.model_name), ("actor", AuditEntry.actor), ("action", AuditEntry.action))
    }


def dataset_rows(session: Session, limit: int = 200) -> list[RowMapping]:
    """Dataset versions, newest first, with how many runs used each."""
    runs = select(Run.dataset_id, func.count(Run.id).label("runs")).group_by(Run.dataset_id).subquery()
    stmt = (
        select(
            Dataset.id, Dataset.source, Dataset.version, Dataset.kind, Dataset.num_images, Dataset.num_patients,
            Dataset.counts, Dataset.validation_success, Dataset.report_path, Dataset.created_at,
            func.coalesce(runs.c.runs, 0).label("runs"),
        )
        .outerjoin(runs, runs.c.dataset_id == Dataset.id)
        .order_by(Dataset.id.desc())
        .limit(limit)
    )
    return list(session.execute(stmt).mappings().all())
