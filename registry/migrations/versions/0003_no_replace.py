"""No row is replaced: SQLite's REPLACE conflict resolution bypasses the delete and update guards.

`INSERT OR REPLACE` (or `REPLACE`, `UPDATE OR REPLACE`) resolves a unique-key conflict by deleting
the row in the way, and SQLite fires no DELETE trigger for that deletion unless the connection set
`recursive_triggers`, which medgate cannot impose on every client of the file. So on SQLite each
unique key of each registry table gets a BEFORE INSERT trigger, and one BEFORE UPDATE OF its
columns, that refuses the statement when a conflicting row exists: the conflict never reaches
REPLACE. A plain INSERT that conflicts fails as before (IntegrityError), now with this message.

PostgreSQL has no REPLACE: `INSERT ... ON CONFLICT DO UPDATE` and `MERGE` fire the UPDATE and DELETE
triggers of 0001 and 0002, which stay the guard there. Nothing changes on PostgreSQL. (2026-12-04)
"""

from __future__ import annotations

from alembic import op

revision, down_revision = "0003", "0002"  # alembic's chain; no branch labels, no dependencies

# (table, columns of a unique key, the partial index's condition or ""), frozen as of 0002.
UNIQUE_KEYS = (
    ("datasets", ("id",), ""),
    ("datasets", ("source", "version"), ""),
    ("runs", ("id",), ""),
    ("runs", ("run_uid",), ""),
    ("model_versions", ("id",), ""),
    ("model_versions", ("name", "version"), ""),
    ("model_versions", ("name",), "stage = 'production'"),
    ("gate_decisions", ("id",), ""),
    ("audit_log", ("id",), ""),
    ("drift_events", ("id",), ""),
)


def _triggers() -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER statement) of each guard."""
    made = []
    for number, (table, columns, condition) in enumerate(UNIQUE_KEYS):
        match = " AND ".join(f"t.{c} = NEW.{c}" for c in columns)
        if condition:
            match += f" AND t.{condition}"
        when_new = f" AND NEW.{condition}" if condition else ""
        message = f"medgate registry: {table} rows are never replaced ({', '.join(columns)} taken)"
        action = f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        name = f"trg_{table}_no_replace_{number}"
        made.append((
            f"{name}_insert",
            f"CREATE TRIGGER {name}_insert BEFORE INSERT ON {table} "
            f"WHEN EXISTS (SELECT 1 FROM {table} AS t WHERE {match}){when_new} {action}",
        ))
        watched = sorted({*columns, *(("stage",) if condition else ())})
        made.append((
            f"{name}_update",
            f"CREATE TRIGGER {name}_update BEFORE UPDATE OF {', '.join(watched)} ON {table} "
            f"WHEN EXISTS (SELECT 1 FROM {table} AS t WHERE {match} AND t.rowid != OLD.rowid){when_new} {action}",
        ))
    return made


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for _, statement in _triggers():
        op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for name, _ in _triggers():
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
