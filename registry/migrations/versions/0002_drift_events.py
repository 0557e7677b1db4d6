"""Drift events: runs whose dataset drifted beyond a configured bound (append-only).

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model-level types: a migration must not change when models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)

TABLE = "drift_events"
PG_GUARD_FUNCTION = "medgate_refuse_change"  # created by 0001


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("baseline_version_id", sa.Integer(), nullable=False),
        sa.Column("checks", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_drift_events"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_drift_events_run_id_runs"),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name="fk_drift_events_dataset_id_datasets"),
        sa.ForeignKeyConstraint(
            ["baseline_version_id"], ["model_versions.id"], name="fk_drift_events_baseline_version_id_model_versions"
        ),
    )
    op.create_index("ix_drift_events_model_name", TABLE, ["model_name"])
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for event, message in (("DELETE", "rows of drift_events are never deleted"), ("UPDATE", "drift_events is append-only")):
            op.execute(
                f"CREATE TRIGGER trg_{TABLE}_no_{event.lower()} BEFORE {event} ON {TABLE} "
                f"BEGIN SELECT RAISE(ABORT, 'medgate registry: {message}'); END"
            )
    elif dialect == "postgresql":
        for event in ("DELETE", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER trg_{TABLE}_no_{event.lower()} BEFORE {event} ON {TABLE} "
                f"FOR EACH ROW EXECUTE FUNCTION {PG_GUARD_FUNCTION}()"
            )
        op.execute(
            f"CREATE TRIGGER trg_{TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_GUARD_FUNCTION}()"
        )
    else:
        raise NotImplementedError(f"registry guards are written for sqlite and postgresql, not {dialect}")


def downgrade() -> None:
    # Dropping the table drops its triggers with it (SQLite and PostgreSQL).
    op.drop_index("ix_drift_events_model_name", TABLE)
    op.drop_table(TABLE)
