"""Repository functions: the only way the rest of medgate writes to the registry.

Every function takes a :class:`~sqlalchemy.orm.Session` first.

Transactions:
    - ``record_dataset``, ``start_run``, ``finish_run``, ``register_model_version``,
      ``set_package``, ``record_gate_decision`` and ``record_drift`` only *flush*; the caller owns
      the transaction and commits (``with session.begin(): ...`` or
      ``session.commit()``).
    - ``promote_version``, ``reject_version``, ``rollback``, ``request_approval`` and
      ``decide_approval`` *commit* the
      session's transaction themselves, so a stage change and its audit rows are
      committed together or not at all. Any pending work already in the session
      is committed with them; on error everything is rolled back.

Concurrency: stage changes lock every row of the model name first
(``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite every transaction is
``BEGIN IMMEDIATE``, see :func:`registry.db.make_engine`), and the database's
partial unique index is the last line of defence against two production
versions of one name.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, Literal

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from registry.errors import InvalidTransition, NotFoundError, PromotionConflict
from registry.models import (
    Approval,
    ApprovalStatus,
    AuditEntry,
    Dataset,
    DriftEvent,
    GateDecision,
    ModelVersion,
    Run,
    RunStatus,
    Stage,
    utcnow,
)

#: ``expected_champion_id`` default: use the champion the latest gate decision compared against.
FROM_GATE: Final = "from_gate"
#: ``expected_champion_id`` value that skips the check (last writer wins, still one production).
ANY_CHAMPION: Final = "any"
ExpectedChampion = int | None | Literal["from_gate", "any"]

DEFAULT_ACTOR: Final = "medgate"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_INSERT_ATTEMPTS = 5
# PostgreSQL serialization failure and deadlock: another writer won the race.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})


# -- helpers -------------------------------------------------------------------------------------


def hash_params(params: Mapping[str, Any]) -> str:
    """Return the SHA-256 of ``params`` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_sha256(value: str) -> str:
    normalised = value.lower()
    if not _SHA256.fullmatch(normalised):
        raise ValueError(f"artifact_sha256 must be 64 hex digits, got {value!r}")
    return normalised


def _check_tag(tag: str | None, field: str) -> None:
    """Refuse BentoML tags that do not pin an exact version (no ``latest``)."""
    if tag is None:
        return
    name, sep, version = tag.partition(":")
    if not (name and sep and version) or version == "latest":
        raise ValueError(f"{field} must be an exact BentoML tag 'name:version' (not latest), got {tag!r}")


def _version_by_id(session: Session, version_id: int) -> ModelVersion:
    version = session.get(ModelVersion, version_id, populate_existing=True)
    if version is None:
        raise NotFoundError(f"no model version with id {version_id}")
    return version


def _lock_name(session: Session, name: str) -> list[ModelVersion]:
    """Lock and reload every version of ``name`` (FOR UPDATE; a no-op on SQLite)."""
    stmt = (
        select(ModelVersion)
        .where(ModelVersion.name == name)
        .order_by(ModelVersion.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(session.scalars(stmt))


def _audit(
    session: Session,
    *,
    actor: str,
    action: str,
    version: ModelVersion,
    from_stage: str | None,
    to_stage: str | None,
    reason: str,
) -> AuditEntry:
    entry = AuditEntry(
        at=utcnow(),
        actor=actor,
        action=action,
        model_name=version.name,
        model_version_id=version.id,
        from_stage=from_stage,
        to_stage=to_stage,
        reason=reason,
    )
    session.add(entry)
    return entry


def _switch_production(
    session: Session,
    *,
    current: ModelVersion | None,
    target: ModelVersion,
    actor: str,
    reason: str,
    action: str,
) -> None:
    """Archive ``current`` then make ``target`` production, with audit rows; flushes in that order."""
    target_from, label = target.stage, f"{target.name} v{target.version}"
    try:
        if current is not None:
            current.stage = Stage.ARCHIVED.value
            session.flush()
        target.stage = Stage.PRODUCTION.value
        target.promoted_at = utcnow()
        session.flush()
    except IntegrityError as exc:
        # Only reachable if the lock was bypassed; the partial unique index refused the second production.
        raise PromotionConflict(f"{label}: another production version appeared concurrently") from exc
    if current is not None:
        archive_action = "archive" if action == "promote" else action
        _audit(session, actor=actor, action=archive_action, version=current,
               from_stage=Stage.PRODUCTION.value, to_stage=Stage.ARCHIVED.value, reason=reason)
    _audit(session, actor=actor, action=action, version=target,
           from_stage=target_from, to_stage=Stage.PRODUCTION.value, reason=reason)
    session.flush()


@contextmanager
def _stage_change(session: Session, label: str) -> Iterator[None]:
    """Commit what the block wrote, or roll all of it back and re-raise; a PostgreSQL serialization
    failure or deadlock (another writer won the race) becomes ``PromotionConflict`` naming ``label``."""
    try:
        yield
        session.commit()
    except OperationalError as exc:
        session.rollback()
        if getattr(exc.orig, "sqlstate", None) in _CONFLICT_SQLSTATES:
            raise PromotionConflict(f"{label}: a concurrent stage change won; retry after re-gating") from exc
        raise
    except BaseException:
        session.rollback()
        raise


# -- datasets and runs ---------------------------------------------------------------------------


def record_dataset(
    session: Session,
    *,
    source: str,
    version: str,
    kind: str,
    num_images: int,
    num_patients: int | None,
    counts: Mapping[str, Any],
    class_names: Sequence[str],
    validation_success: bool,
    report_path: str | None,
) -> Dataset:
    """Record a dataset version; idempotent on ``(source, version)``.

    If the pair exists, its other fields are updated and the existing row is
    returned. Flushes only.

    Args:
        source: a path or dataset name (e.g. ``medmnist:pneumoniamnist``), never patient data.
        version: the DVC content hash of the dataset.
        counts: aggregate counts per split and class.
        class_names: label order; index ``i`` is class ``i``.
    """
    fields: dict[str, Any] = {
        "kind": kind,
        "num_images": num_images,
        "num_patients": num_patients,
        "counts": dict(counts),
        "class_names": list(class_names),
        "validation_success": validation_success,
        "report_path": report_path,
    }
    stmt = select(Dataset).where(Dataset.source == source, Dataset.version == version)
    existing = session.scalars(stmt).one_or_none()
    if existing is None:
        dataset = Dataset(source=source, version=version, created_at=utcnow(), **fields)
        try:
            with session.begin_nested():
                session.add(dataset)
            return dataset
        except IntegrityError:
            # A concurrent writer recorded the same (source, version) first.
            existing = session.scalars(stmt).one_or_none()
            if existing is None:
                raise
    for key, value in fields.items():
        setattr(existing, key, value)
    session.flush()
    return existing


def list_datasets(session: Session) -> list[Dataset]:
    """All recorded dataset versions, oldest first."""
    return list(session.scalars(select(Dataset).order_by(Dataset.id)))


def dataset_seq(session: Session, version: str) -> int | None:
    """Where dataset ``version`` (a content hash) stands in the registry's order: the id of its
    first record under any source, or ``None`` if it was never recorded."""
    return session.scalar(select(func.min(Dataset.id)).where(Dataset.version == version))


def record_drift(
    session: Session,
    *,
    run_id: int,
    dataset_id: int,
    baseline_version_id: int,
    checks: Sequence[Mapping[str, Any]],
    reason: str,
    actor: str = DEFAULT_ACTOR,
) -> DriftEvent:
    """Record that a run's dataset drifted beyond a bound from the training data of the production
    version ``baseline_version_id`` (the event takes its model name), with a ``drift`` audit row on
    that version. Flushes only.

    Args:
        checks: the exceeded statistics (name, value, bound, detail): aggregates, no identifiers.
        reason: the audit row's text (what drifted, and what follows from it).

    Raises:
        NotFoundError: unknown run, dataset or version.
    """
    baseline = _version_by_id(session, baseline_version_id)
    if session.get(Run, run_id) is None:
        raise NotFoundError(f"no run with id {run_id}")
    if session.get(Dataset, dataset_id) is None:
        raise NotFoundError(f"no dataset with id {dataset_id}")
    event = DriftEvent(
        model_name=baseline.name,
        run_id=run_id,
        dataset_id=dataset_id,
        baseline_version_id=baseline.id,
        checks=[dict(check) for check in checks],
        created_at=utcnow(),
    )
    session.add(event)
    _audit(session, actor=actor, action="drift", version=baseline, from_stage=None, to_stage=None, reason=reason)
    session.flush()
    return event


def latest_drift(session: Session, model_name: str) -> DriftEvent | None:
    """The most recent drift event of ``model_name``, or ``None``."""
    stmt = select(DriftEvent).where(DriftEvent.model_name == model_name).order_by(DriftEvent.id.desc()).limit(1)
    return session.scalars(stmt).first()


def start_run(
    session: Session,
    *,
    dataset_id: int | None,
    params: Mapping[str, Any],
    git_commit: str | None,
    prefect_flow_run_id: str | None,
    trigger: str,
    triggered_by: str | None = None,
) -> Run:
    """Record a new run in status ``running`` with a fresh ``run_uid``. Flushes only.

    Args:
        dataset_id: the dataset it trains on; ``None`` until known (see :func:`finish_run`).
        params: the resolved ``params.yaml`` sections; hashed into ``params_hash``.
        trigger: what started it, e.g. ``manual``, ``schedule``, ``data-change``.
        triggered_by: who started it (an OS or console user name), read by the approval policy.
    """
    run = Run(
        run_uid=str(uuid.uuid4()),
        dataset_id=dataset_id,
        params=dict(params),
        params_hash=hash_params(params),
        git_commit=git_commit,
        prefect_flow_run_id=prefect_flow_run_id,
        trigger=trigger,
        triggered_by=triggered_by,
        status=RunStatus.RUNNING.value,
        started_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_uid: str) -> Run | None:
    """The run with this ``run_uid``, or ``None``."""
    return session.scalars(select(Run).where(Run.run_uid == run_uid)).one_or_none()


def finish_run(
    session: Session,
    run_uid: str,
    *,
    status: str,
    summary: Mapping[str, Any] | None = None,
    error: str | None = None,
    dataset_id: int | None = None,
) -> Run:
    """Mark a running run ``completed`` or ``failed``. Flushes only.

    Raises:
        ValueError: ``status`` is not completed/failed.
        NotFoundError: no run with ``run_uid``.
        InvalidTransition: the run already finished.
    """
    if status not in (RunStatus.COMPLETED, RunStatus.FAILED):
        raise ValueError(f"a run finishes as 'completed' or 'failed', not {status!r}")
    run = get_run(session, run_uid)
    if run is None:
        raise NotFoundError(f"no run with run_uid {run_uid}")
    if run.status != RunStatus.RUNNING:
        raise InvalidTransition(f"run {run_uid} already finished as {run.status}")
    run.status = str(status)
    run.summary = dict(summary) if summary is not None else None
    run.error = error
    run.finished_at = utcnow()
    if dataset_id is not None:
        run.dataset_id = dataset_id
    session.flush()
    return run


# -- model versions ------------------------------------------------------------------------------


def register_model_version(
    session: Session,
    *,
    name: str,
    run_id: int,
    dataset_version: str,
    test_data_version: str,
    metrics: Mapping[str, Any],
    artifact_sha256: str,
    model_tag: str | None = None,
    bento_tag: str | None = None,
    actor: str = DEFAULT_ACTOR,
) -> ModelVersion:
    """Register a new ``candidate`` version of ``name`` with the next version number.

    Writes a ``register`` audit row. Flushes only. Safe against concurrent
    registrations of the same name: a lost race for a number retries with the next.

    Raises:
        NotFoundError: no run with ``run_id``.
        ValueError: malformed sha256 or a tag that is not an exact ``name:version``.
    """
    sha256 = _check_sha256(artifact_sha256)
    _check_tag(model_tag, "model_tag")
    _check_tag(bento_tag, "bento_tag")
    if session.get(Run, run_id) is None:
        raise NotFoundError(f"no run with id {run_id}")
    for attempt in range(_INSERT_ATTEMPTS):
        latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
        number = (latest or 0) + 1
        version = ModelVersion(
            name=name,
            version=number,
            run_id=run_id,
            dataset_version=dataset_version,
            test_data_version=test_data_version,
            stage=Stage.CANDIDATE.value,
            metrics=dict(metrics),
            artifact_sha256=sha256,
            model_tag=model_tag,
            bento_tag=bento_tag,
            created_at=utcnow(),
        )
        try:
            with session.begin_nested():
                session.add(version)
                session.flush()
                _audit(session, actor=actor, action="register", version=version,
                       from_stage=None, to_stage=Stage.CANDIDATE.value, reason=f"registered from run {run_id}")
            return version
        except IntegrityError:
            taken = session.scalar(
                select(exists().where(ModelVersion.name == name, ModelVersion.version == number))
            )
            if not taken or attempt == _INSERT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def set_package(session: Session, version_id: int, model_tag: str, bento_tag: str) -> ModelVersion:
    """Attach the BentoML model and Bento tags to a candidate. Flushes only.

    Idempotent when the tags are unchanged. A version that is, or was,
    production keeps its tags: what is served must not change under its name.

    Raises:
        NotFoundError: unknown ``version_id``.
        ValueError: a tag that is not an exact ``name:version``.
        InvalidTransition: re-tagging a version that is not a candidate.
    """
    _check_tag(model_tag, "model_tag")
    _check_tag(bento_tag, "bento_tag")
    version = _version_by_id(session, version_id)
    if (version.model_tag, version.bento_tag) == (model_tag, bento_tag):
        return version
    if version.stage != Stage.CANDIDATE:
        raise InvalidTransition(f"{version.name} v{version.version} is {version.stage}; its tags are fixed")
    version.model_tag = model_tag
    version.bento_tag = bento_tag
    session.flush()
    return version


def record_gate_decision(
    session: Session,
    *,
    model_version_id: int,
    promote: bool,
    checks: Sequence[Mapping[str, Any]],
    champion_version_id: int | None,
    reason: str,
) -> GateDecision:
    """Store the gate's verdict and every check behind it. Flushes only.

    ``champion_version_id`` is the production version the candidate was compared
    against; :func:`promote_version` later refuses if production has changed since.
    """
    version = _version_by_id(session, model_version_id)
    if champion_version_id is not None:
        _version_by_id(session, champion_version_id)
    decision = GateDecision(
        model_version_id=version.id,
        promote=promote,
        checks=[dict(check) for check in checks],
        champion_version_id=champion_version_id,
        reason=reason,
        created_at=utcnow(),
    )
    session.add(decision)
    session.flush()
    return decision


def latest_gate_decision(session: Session, model_version_id: int) -> GateDecision | None:
    """The most recent gate decision on a version, or ``None``."""
    stmt = (
        select(GateDecision)
        .where(GateDecision.model_version_id == model_version_id)
        .order_by(GateDecision.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


# -- stage changes (these commit) ----------------------------------------------------------------


def promote_version(
    session: Session,
    version_id: int,
    *,
    actor: str,
    reason: str,
    expected_champion_id: ExpectedChampion = FROM_GATE,
) -> ModelVersion:
    """Make a version production and archive the previous one, atomically; commits.

    Both stage changes and their audit rows (``archive``, ``promote``) are one
    transaction. Promoting the version that is already production is a no-op.

    Args:
        version_id: a ``candidate`` or ``archived`` version.
        actor: who promotes (1 to 200 characters, enforced by the database).
        reason: why, stored in the audit log.
        expected_champion_id: the production version id the decision was based
            on (``None``: no production). The default ``FROM_GATE`` takes it from
            the version's latest gate decision (no check when there is none);
            ``ANY_CHAMPION`` skips the check.

    Raises:
        NotFoundError: unknown ``version_id``.
        InvalidTransition: the version is ``rejected``, or awaits approval (:func:`decide_approval`).
        PromotionConflict: production is not the expected champion (someone else
            promoted first) or a concurrent promotion won.
        sqlalchemy.exc.DBAPIError: the database refused the audit row (an empty or
            over-long actor: IntegrityError, or DataError on PostgreSQL); nothing changed.
    """
    with _stage_change(session, f"model version id {version_id}"):
        name = _version_by_id(session, version_id).name
        rows = _lock_name(session, name)
        target = next(v for v in rows if v.id == version_id)
        current = next((v for v in rows if v.stage == Stage.PRODUCTION), None)
        if current is not None and current.id == target.id:
            return target
        if target.stage not in (Stage.CANDIDATE, Stage.ARCHIVED):
            raise InvalidTransition(f"{name} v{target.version} is {target.stage} and cannot be promoted")
        approval = get_approval(session, version_id)
        if approval is not None and approval.status == ApprovalStatus.PENDING:
            raise InvalidTransition(f"{name} v{target.version} awaits approval: an approver signs it off (medgate models approve)")
        expected = expected_champion_id
        if expected == FROM_GATE:
            decision = latest_gate_decision(session, version_id)
            expected = ANY_CHAMPION if decision is None else decision.champion_version_id
        current_id = current.id if current is not None else None
        if expected != ANY_CHAMPION and expected != current_id:
            found = f"v{current.version}" if current is not None else "none"
            raise PromotionConflict(
                f"{name}: production changed since the decision (expected version id {expected}, "
                f"found {found}); re-run the gate against the new champion"
            )
        _switch_production(
            session, current=current, target=target, actor=actor, reason=reason, action="promote"
        )
        return target


def reject_version(session: Session, version_id: int, *, actor: str, reason: str) -> ModelVersion:
    """Mark a candidate ``rejected`` with a ``reject`` audit row; commits.

    Rejecting an already rejected version is a no-op.

    Raises:
        NotFoundError: unknown ``version_id``.
        InvalidTransition: the version is not a candidate.
        PromotionConflict: a concurrent stage change of the name won (PostgreSQL).
    """
    with _stage_change(session, f"model version id {version_id}"):
        name = _version_by_id(session, version_id).name
        target = next(v for v in _lock_name(session, name) if v.id == version_id)
        if target.stage == Stage.REJECTED:
            return target
        if target.stage != Stage.CANDIDATE:
            raise InvalidTransition(
                f"{name} v{target.version} is {target.stage}; only candidates are rejected"
            )
        from_stage = target.stage
        target.stage = Stage.REJECTED.value
        session.flush()
        _audit(session, actor=actor, action="reject", version=target,
               from_stage=from_stage, to_stage=Stage.REJECTED.value, reason=reason)
        session.flush()
        return target


def rollback(
    session: Session,
    name: str,
    *,
    actor: str,
    reason: str,
    to_version: int | None = None,
) -> ModelVersion:
    """Restore an earlier production version of ``name``; commits.

    The current production version is archived and the target made production,
    with two ``rollback`` audit rows, in one transaction. The target is
    ``to_version`` (which must be archived) or else the version that was
    production most recently before the current one.

    Raises:
        NotFoundError: no versions of ``name``, or no ``to_version``.
        InvalidTransition: nothing to roll back to, or ``to_version`` is not archived.
    """
    with _stage_change(session, name):
        rows = _lock_name(session, name)
        if not rows:
            raise NotFoundError(f"no model versions named {name!r}")
        current = next((v for v in rows if v.stage == Stage.PRODUCTION), None)
        if to_version is not None:
            target = next((v for v in rows if v.version == to_version), None)
            if target is None:
                raise NotFoundError(f"{name} has no version {to_version}")
            if target.stage != Stage.ARCHIVED:
                raise InvalidTransition(
                    f"{name} v{to_version} is {target.stage}; only archived versions return"
                )
        else:
            if current is None:
                raise InvalidTransition(f"{name} has no production version to roll back")
            earlier = [v for v in rows if v.stage == Stage.ARCHIVED and v.promoted_at is not None]
            if not earlier:
                raise InvalidTransition(f"{name} has no earlier production version")
            target = max(earlier, key=lambda v: (v.promoted_at, v.id))
        _switch_production(
            session, current=current, target=target, actor=actor, reason=reason, action="rollback"
        )
        return target


# -- human sign-off (these commit) ---------------------------------------------------------------


def get_approval(session: Session, version_id: int) -> Approval | None:
    """The approval row of a version (pending or decided), or ``None``."""
    return session.scalars(
        select(Approval).where(Approval.model_version_id == version_id).execution_options(populate_existing=True)
    ).one_or_none()


def awaiting_approval(session: Session) -> set[int]:
    """The ids of the versions whose approval is pending."""
    return set(session.scalars(select(Approval.model_version_id).where(Approval.status == ApprovalStatus.PENDING.value)))


def request_approval(session: Session, version_id: int, *, actor: str, reason: str) -> Approval:
    """Make a candidate wait for a person's sign-off (an ``approval-request`` audit row); commits.

    Idempotent while the request is pending.

    Raises:
        NotFoundError: unknown ``version_id``.
        InvalidTransition: the version is not a candidate, or its approval was decided already.
    """
    with _stage_change(session, f"model version id {version_id}"):
        name = _version_by_id(session, version_id).name
        target = next(v for v in _lock_name(session, name) if v.id == version_id)
        existing = get_approval(session, version_id)
        if existing is not None:
            if existing.status != ApprovalStatus.PENDING:
                raise InvalidTransition(f"{name} v{target.version} was {existing.status} already")
            return existing
        if target.stage != Stage.CANDIDATE:
            raise InvalidTransition(f"{name} v{target.version} is {target.stage}; only candidates await approval")
        approval = Approval(model_version_id=target.id, status=ApprovalStatus.PENDING.value, requested_at=utcnow())
        session.add(approval)
        _audit(session, actor=actor, action="approval-request", version=target,
               from_stage=target.stage, to_stage=None, reason=reason)
        session.flush()
        return approval


def decide_approval(session: Session, version_id: int, *, approve: bool, actor: str, reason: str) -> ModelVersion:
    """An approver's sign-off on a pending candidate; commits.

    Approved: the version is promoted by :func:`promote_version` (its gate decision's champion
    check included) in the same transaction as the approval's decision; refused: it is rejected by
    :func:`reject_version`. Either way the audit rows name ``actor``. Who may approve is the caller's
    rule (``components.stages.gate.approval_refusal``), checked in the same session beforehand.

    Raises:
        NotFoundError: unknown ``version_id``.
        InvalidTransition: no pending approval for the version.
        PromotionConflict: production changed since the version's gate decision: re-run the gate.
    """
    if not reason.strip():
        raise ValueError("a sign-off needs a reason")
    try:
        approval = get_approval(session, version_id)
        version = _version_by_id(session, version_id)
        if approval is None or approval.status != ApprovalStatus.PENDING:
            state = "no approval was requested" if approval is None else f"it was {approval.status} already"
            raise InvalidTransition(f"{version.name} v{version.version} does not await approval ({state})")
        approval.status = (ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED).value
        approval.decided_by, approval.decided_at, approval.reason = actor, utcnow(), reason
        session.flush()
    except BaseException:
        session.rollback()
        raise
    if approve:
        return promote_version(session, version_id, actor=actor, reason=f"approved: {reason}")
    return reject_version(session, version_id, actor=actor, reason=f"approval refused: {reason}")


def audit_account(session: Session, *, actor: str, action: str, reason: str) -> AuditEntry:
    """An audit row about accounts and sign-ins (no model: ``model_name`` is empty). Flushes only."""
    entry = AuditEntry(at=utcnow(), actor=actor, action=action, model_name="", model_version_id=None,
                       from_stage=None, to_stage=None, reason=reason)
    session.add(entry)
    session.flush()
    return entry


# -- queries -------------------------------------------------------------------------------------


def get_champion(session: Session, name: str) -> ModelVersion | None:
    """The production version of ``name``, or ``None``."""
    stmt = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.stage == Stage.PRODUCTION.value)
    return session.scalars(stmt).one_or_none()


def get_version(session: Session, name: str, version: int) -> ModelVersion | None:
    """Version ``version`` of ``name``, or ``None``."""
    stmt = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    return session.scalars(stmt).one_or_none()


def list_versions(session: Session, name: str | None = None) -> list[ModelVersion]:
    """All versions (of ``name`` if given), ordered by name then version."""
    stmt = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
    if name is not None:
        stmt = stmt.where(ModelVersion.name == name)
    return list(session.scalars(stmt))


def latest_production(session: Session) -> ModelVersion | None:
    """The production version promoted most recently, across all names."""
    stmt = (
        select(ModelVersion)
        .where(ModelVersion.stage == Stage.PRODUCTION.value)
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def audit_trail(session: Session, name: str | None = None) -> list[AuditEntry]:
    """Audit rows (of ``name`` if given), oldest first."""
    stmt = select(AuditEntry).order_by(AuditEntry.id)
    if name is not None:
        stmt = stmt.where(AuditEntry.model_name == name)
    return list(session.scalars(stmt))
