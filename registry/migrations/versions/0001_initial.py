"""Initial registry schema: datasets, runs, model versions, gate decisions, audit log.

Also creates the database-level guards: one production version per model name
(partial unique index), no DELETE on any registry table, no UPDATE on audit_log.

Revision ID: 0001
Revises:
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model-level types: a migration must not change when models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)

NO_DELETE_TABLES = ("datasets", "runs", "model_versions", "gate_decisions", "audit_log")
PG_GUARD_FUNCTION = "medgate_refuse_change"


def _create_tables() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("num_patients", sa.Integer(), nullable=True),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("class_names", JSON, nullable=False),
        sa.Column("validation_success", sa.Boolean(), nullable=False),
        sa.Column("report_path", sa.String(1024), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        sa.UniqueConstraint("source", "version", name="uq_datasets_source_version"),
        sa.CheckConstraint("num_images >= 0", name="ck_datasets_num_images_non_negative"),
        sa.CheckConstraint(
            "num_patients IS NULL OR num_patients >= 0", name="ck_datasets_num_patients_non_negative"
        ),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_uid", sa.String(36), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=True),
        sa.Column("params", JSON, nullable=False),
        sa.Column("params_hash", sa.String(64), nullable=False),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("prefect_flow_run_id", sa.String(64), nullable=True),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("summary", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name="fk_runs_dataset_id_datasets"),
        sa.UniqueConstraint("run_uid", name="uq_runs_run_uid"),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed')", name="ck_runs_status_valid"),
    )
    op.create_index("ix_runs_dataset_id", "runs", ["dataset_id"])
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("dataset_version", sa.String(128), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("model_tag", sa.String(256), nullable=True),
        sa.Column("bento_tag", sa.String(256), nullable=True),
        sa.Column("test_data_version", sa.String(128), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("promoted_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_model_versions_run_id_runs"),
        sa.UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
        sa.CheckConstraint(
            "stage IN ('candidate', 'production', 'archived', 'rejected')",
            name="ck_model_versions_stage_valid",
        ),
        sa.CheckConstraint("version >= 1", name="ck_model_versions_version_positive"),
        sa.CheckConstraint("length(artifact_sha256) = 64", name="ck_model_versions_artifact_sha256_length"),
    )
    op.create_index("ix_model_versions_run_id", "model_versions", ["run_id"])
    op.create_index(
        "uq_model_versions_one_production",
        "model_versions",
        ["name"],
        unique=True,
        sqlite_where=sa.text("stage = 'production'"),
        postgresql_where=sa.text("stage = 'production'"),
    )
    op.create_table(
        "gate_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("promote", sa.Boolean(), nullable=False),
        sa.Column("checks", JSON, nullable=False),
        sa.Column("champion_version_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_gate_decisions"),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name="fk_gate_decisions_model_version_id_model_versions",
        ),
        sa.ForeignKeyConstraint(
            ["champion_version_id"],
            ["model_versions.id"],
            name="fk_gate_decisions_champion_version_id_model_versions",
        ),
    )
    op.create_index("ix_gate_decisions_model_version_id", "gate_decisions", ["model_version_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("from_stage", sa.String(16), nullable=True),
        sa.Column("to_stage", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"], name="fk_audit_log_model_version_id_model_versions"
        ),
        sa.CheckConstraint("length(actor) BETWEEN 1 AND 200", name="ck_audit_log_actor_length"),
    )
    op.create_index("ix_audit_log_model_name", "audit_log", ["model_name"])


def _create_guards(dialect: str) -> None:
    if dialect == "sqlite":
        for table in NO_DELETE_TABLES:
            op.execute(
                f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'medgate registry: rows of {table} are never deleted'); END"
            )
        op.execute(
            "CREATE TRIGGER trg_audit_log_no_update BEFORE UPDATE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'medgate registry: audit_log is append-only'); END"
        )
    elif dialect == "postgresql":
        # SQLSTATE 23001 (restrict_violation) so drivers raise IntegrityError, as SQLite does.
        op.execute(
            f"CREATE OR REPLACE FUNCTION {PG_GUARD_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION USING "
            "MESSAGE = 'medgate registry: ' || TG_OP || ' on ' || TG_TABLE_NAME || ' is not allowed', "
            "ERRCODE = 'restrict_violation'; END $$"
        )
        for table in NO_DELETE_TABLES:
            op.execute(
                f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {PG_GUARD_FUNCTION}()"
            )
            op.execute(
                f"CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_GUARD_FUNCTION}()"
            )
        op.execute(
            "CREATE TRIGGER trg_audit_log_no_update BEFORE UPDATE ON audit_log "
            f"FOR EACH ROW EXECUTE FUNCTION {PG_GUARD_FUNCTION}()"
        )
    else:
        raise NotImplementedError(f"registry guards are written for sqlite and postgresql, not {dialect}")


def upgrade() -> None:
    _create_tables()
    _create_guards(op.get_context().dialect.name)


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    suffix = " ON audit_log" if dialect == "postgresql" else ""
    op.execute(f"DROP TRIGGER IF EXISTS trg_audit_log_no_update{suffix}")
    for table in NO_DELETE_TABLES:
        on = f" ON {table}" if dialect == "postgresql" else ""
        op.execute(f"DROP TRIGGER IF EXISTS trg_{table}_no_delete{on}")
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS trg_{table}_no_truncate ON {table}")
    if dialect == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {PG_GUARD_FUNCTION}()")
    for table in reversed(NO_DELETE_TABLES):
        op.drop_table(table)
