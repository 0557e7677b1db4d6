"""The review console: users (roles, argon2 hashes), approvals (human sign-off), who triggered each run.

`users` rows are never deleted (a removed user keeps its row and name, so the audit log's actors keep
meaning one person); `approvals` rows are never deleted, and a decided approval never changes. On
SQLite their unique keys get 0003's guard against REPLACE. (2026-12-04)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0004", "0003"  # alembic's chain; no branch labels, no dependencies

TIMESTAMP = sa.DateTime(timezone=True)  # frozen copy of the model-level type
PG_GUARD_FUNCTION = "medgate_refuse_change"  # created by 0001
NEW_TABLES = ("users", "approvals")
# (table, columns of a unique key), as in 0003.
UNIQUE_KEYS = (("users", ("id",)), ("users", ("name",)), ("approvals", ("id",)), ("approvals", ("model_version_id",)))
DECIDED = "OLD.status <> 'pending'"


def _create_tables() -> None:
    op.add_column("runs", sa.Column("triggered_by", sa.String(200), nullable=True))
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(512), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("removed_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
        sa.CheckConstraint("role IN ('viewer', 'approver', 'admin')", name="ck_users_role_valid"),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name="ck_users_name_length"),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_at", TIMESTAMP, nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decided_at", TIMESTAMP, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"], name="fk_approvals_model_version_id_model_versions"
        ),
        sa.UniqueConstraint("model_version_id", name="uq_approvals_model_version_id"),
        sa.CheckConstraint("status IN ('pending', 'approved', 'rejected')", name="ck_approvals_status_valid"),
    )


def _sqlite_guards() -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER) of each SQLite guard: no delete, no change to a decided approval, no REPLACE."""
    made = [
        (f"trg_{table}_no_delete",
         f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table} "
         f"BEGIN SELECT RAISE(ABORT, 'medgate registry: rows of {table} are never deleted'); END")
        for table in NEW_TABLES
    ]
    made.append((
        "trg_approvals_decided",
        f"CREATE TRIGGER trg_approvals_decided BEFORE UPDATE ON approvals WHEN {DECIDED} "
        "BEGIN SELECT RAISE(ABORT, 'medgate registry: a decided approval never changes'); END",
    ))
    for number, (table, columns) in enumerate(UNIQUE_KEYS):
        match = " AND ".join(f"t.{c} = NEW.{c}" for c in columns)
        action = f"BEGIN SELECT RAISE(ABORT, 'medgate registry: {table} rows are never replaced ({', '.join(columns)} taken)'); END"
        name = f"trg_{table}_no_replace_{number}"
        made.append((f"{name}_insert", f"CREATE TRIGGER {name}_insert BEFORE INSERT ON {table} "
                                       f"WHEN EXISTS (SELECT 1 FROM {table} AS t WHERE {match}) {action}"))
        made.append((f"{name}_update", f"CREATE TRIGGER {name}_update BEFORE UPDATE OF {', '.join(columns)} ON {table} "
                                       f"WHEN EXISTS (SELECT 1 FROM {table} AS t WHERE {match} AND t.rowid != OLD.rowid) {action}"))
    return made


def upgrade() -> None:
    _create_tables()
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for _, statement in _sqlite_guards():
            op.execute(statement)
    elif dialect == "postgresql":
        for table in NEW_TABLES:
            op.execute(f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table} "
                       f"FOR EACH ROW EXECUTE FUNCTION {PG_GUARD_FUNCTION}()")
            op.execute(f"CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_GUARD_FUNCTION}()")
        op.execute(f"CREATE TRIGGER trg_approvals_decided BEFORE UPDATE ON approvals FOR EACH ROW WHEN ({DECIDED}) "
                   f"EXECUTE FUNCTION {PG_GUARD_FUNCTION}()")
    else:
        raise NotImplementedError(f"registry guards are written for sqlite and postgresql, not {dialect}")


def downgrade() -> None:
    # Dropping a table drops its triggers with it (SQLite and PostgreSQL).
    op.drop_table("approvals")
    op.drop_table("users")
    op.execute("ALTER TABLE runs DROP COLUMN triggered_by")  # SQLite >= 3.35 and PostgreSQL
