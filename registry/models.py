"""Registry tables as typed SQLAlchemy 2 ORM classes.

The schema itself is owned by the Alembic migrations in ``registry/migrations``;
these classes must stay in step with them (a test compares the two). Invariants
that matter for patient safety are enforced by the database, not only here:

- at most one ``production`` version per model name (partial unique index);
- no row of any registry table is ever deleted, and ``audit_log`` and
  ``drift_events`` rows are never updated (triggers, created by the migrations);
- stages, run statuses and actors are checked by CHECK constraints;
- an approval, once decided, never changes (trigger, migration 0004).

No table holds patient data: ``Dataset.source`` is a path or a dataset name, and
counts are aggregates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Name of the partial unique index that allows one production version per name.
ONE_PRODUCTION_INDEX = "uq_model_versions_one_production"

MAX_ACTOR_LENGTH = 200


class Stage(StrEnum):
    """Lifecycle stage of a model version."""

    CANDIDATE = "candidate"
    PRODUCTION = "production"
    ARCHIVED = "archived"
    REJECTED = "rejected"


#: How a candidate that waits for a person's sign-off is shown: its stage stays ``candidate`` and its
#: ``approvals`` row is ``pending`` (docs/gate.md, "Human sign-off").
AWAITING_APPROVAL = "awaiting_approval"


class Role(StrEnum):
    """What a console user may do: viewers read; approvers and admins also sign off candidates."""

    VIEWER = "viewer"
    APPROVER = "approver"
    ADMIN = "admin"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class RunStatus(StrEnum):
    """Status of a pipeline run."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    SQLite keeps no offset, so values are normalised to UTC on the way in and
    tagged as UTC on the way out; PostgreSQL uses ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: JSON everywhere, JSONB on PostgreSQL.
JsonType: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")


def _in_list(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base sharing one metadata with a fixed naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Dataset(Base):
    """One version of a dataset, as ingested and validated.

    ``version`` is the DVC content hash; ``(source, version)`` is unique.
    ``num_patients`` is ``None`` where the source carries no patient identifiers.
    """

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("source", "version"),
        CheckConstraint("num_images >= 0", name="num_images_non_negative"),
        CheckConstraint("num_patients IS NULL OR num_patients >= 0", name="num_patients_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    version: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    num_images: Mapped[int] = mapped_column(Integer)
    num_patients: Mapped[int | None] = mapped_column(Integer)
    counts: Mapped[dict[str, Any]] = mapped_column(JsonType)
    class_names: Mapped[list[str]] = mapped_column(JsonType)
    validation_success: Mapped[bool] = mapped_column(Boolean)
    report_path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"Dataset(id={self.id!r}, source={self.source!r}, version={self.version!r})"


class Run(Base):
    """One pipeline run: its inputs (dataset, params, commit), trigger and outcome."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_in_list("status", RunStatus), name="status_valid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_uid: Mapped[str] = mapped_column(String(36), unique=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType)
    params_hash: Mapped[str] = mapped_column(String(64))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(64))
    # Who started it (the OS user of the process, or a scheduler's); the approval policy reads it.
    triggered_by: Mapped[str | None] = mapped_column(String(MAX_ACTOR_LENGTH))
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING.value)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    summary: Mapped[dict[str, Any] | None] = mapped_column(JsonType)

    dataset: Mapped[Dataset | None] = relationship()

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, run_uid={self.run_uid!r}, status={self.status!r})"


class ModelVersion(Base):
    """A trained model version and its lifecycle stage.

    ``version`` counts from 1 per ``name``. ``model_tag`` and ``bento_tag`` are
    exact BentoML tags (``name:version``), never ``latest``. ``promoted_at`` is the
    last time this version became production.
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint(_in_list("stage", Stage), name="stage_valid"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("length(artifact_sha256) = 64", name="artifact_sha256_length"),
        Index(
            ONE_PRODUCTION_INDEX,
            "name",
            unique=True,
            sqlite_where=text("stage = 'production'"),
            postgresql_where=text("stage = 'production'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    dataset_version: Mapped[str] = mapped_column(String(128))
    stage: Mapped[str] = mapped_column(String(16), default=Stage.CANDIDATE.value)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonType)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    model_tag: Mapped[str | None] = mapped_column(String(256))
    bento_tag: Mapped[str | None] = mapped_column(String(256))
    test_data_version: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    run: Mapped[Run] = relationship()

    def __repr__(self) -> str:
        return f"ModelVersion(name={self.name!r}, version={self.version!r}, stage={self.stage!r})"


class GateDecision(Base):
    """The gate's verdict on one model version, with every check it made.

    ``checks`` is a list of dicts (metric, value, threshold, verdict, ...);
    ``champion_version_id`` is the production version the candidate was compared
    against, ``None`` when there was none.
    """

    __tablename__ = "gate_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    promote: Mapped[bool] = mapped_column(Boolean)
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JsonType)
    champion_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    model_version: Mapped[ModelVersion] = relationship(foreign_keys=[model_version_id])

    def __repr__(self) -> str:
        return f"GateDecision(id={self.id!r}, model_version_id={self.model_version_id!r}, promote={self.promote!r})"


class DriftEvent(Base):
    """A run whose dataset drifted beyond a configured bound from the production model's training data.

    ``checks`` lists the exceeded statistics (name, value, bound, detail): aggregates, never
    identifiers. Append-only, like ``audit_log``. With ``drift.require_retraining`` the gate reads
    the latest event of a model name (docs/gate.md).
    """

    __tablename__ = "drift_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    baseline_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    dataset: Mapped[Dataset] = relationship()

    def __repr__(self) -> str:
        return f"DriftEvent(id={self.id!r}, model_name={self.model_name!r}, dataset_id={self.dataset_id!r})"


class AuditEntry(Base):
    """One append-only audit row: who changed which version's stage, when and why."""

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint(f"length(actor) BETWEEN 1 AND {MAX_ACTOR_LENGTH}", name="actor_length"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(MAX_ACTOR_LENGTH))
    action: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    from_stage: Mapped[str | None] = mapped_column(String(16))
    to_stage: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)

    def __repr__(self) -> str:
        return (
            f"AuditEntry(id={self.id!r}, action={self.action!r}, model_name={self.model_name!r}, "
            f"{self.from_stage!r}->{self.to_stage!r})"
        )


class User(Base):
    """A console account. ``password_hash`` is an argon2 hash (never the password); a removed user keeps
    its row (``removed_at``), so the names in the audit log keep meaning one person."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_in_list("role", Role), name="role_valid"),
        CheckConstraint(f"length(name) BETWEEN 1 AND {MAX_ACTOR_LENGTH}", name="name_length"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_ACTOR_LENGTH), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"User(name={self.name!r}, role={self.role!r})"


class Approval(Base):
    """A candidate's wait for a person's sign-off (``gate.<policy>.require_approval``): one per version,
    ``pending`` until an approver approves (the version is promoted in the same transaction) or
    rejects it. A decided row never changes (database trigger)."""

    __tablename__ = "approvals"
    __table_args__ = (CheckConstraint(_in_list("status", ApprovalStatus), name="status_valid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=ApprovalStatus.PENDING.value)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(MAX_ACTOR_LENGTH))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(Text)

    model_version: Mapped[ModelVersion] = relationship()

    def __repr__(self) -> str:
        return f"Approval(model_version_id={self.model_version_id!r}, status={self.status!r})"
