"""Engines, sessions and migrations for the registry database.

SQLite (the single-machine default) and PostgreSQL are both supported by URL,
e.g. ``sqlite:///./.medgate/registry.db`` or
``postgresql+psycopg://user@host:5432/medgate``. Nothing here runs at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from registry.errors import SchemaOutOfDate

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: The PostgreSQL advisory lock `upgrade_database` holds while it migrates (any fixed 64-bit number:
#: "medgate" in ASCII).
MIGRATION_LOCK_KEY = int.from_bytes(b"medgate", "big")

#: How long a SQLite writer waits for another writer's lock before giving up.
DEFAULT_SQLITE_BUSY_TIMEOUT_S = 30.0


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(database)


def _install_sqlite_hooks(engine: Engine, busy_timeout_s: float) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` and set safe pragmas.

    ``BEGIN IMMEDIATE`` takes the write lock when the transaction starts, so two
    writers never read the same state and then both write: the second waits (up
    to the busy timeout) and then reads what the first committed. This is the
    SQLite counterpart of PostgreSQL's ``SELECT ... FOR UPDATE`` in promotions.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 driver so the "begin" hook below owns it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            # WAL persists in the file: switch once, not on every connect (switching needs a lock).
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(
    url: str | URL,
    *,
    echo: bool = False,
    sqlite_busy_timeout_s: float = DEFAULT_SQLITE_BUSY_TIMEOUT_S,
) -> Engine:
    """Create an engine for the registry database.

    For a SQLite file the parent folder is created, foreign keys are enforced,
    the journal is WAL, and transactions begin immediately (see
    ``_install_sqlite_hooks``). PostgreSQL options such as a search path can be
    given in the URL query, e.g. ``?options=-csearch_path%3Dmy_schema``.

    Args:
        url: SQLAlchemy database URL.
        echo: log SQL statements.
        sqlite_busy_timeout_s: how long a SQLite writer waits for the lock.

    Returns:
        A new engine; dispose of it when done.
    """
    parsed = make_url(url)
    if not _is_sqlite(parsed):
        return create_engine(parsed, echo=echo, pool_pre_ping=True)
    path = _sqlite_file(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, echo=echo, connect_args={"timeout": sqlite_busy_timeout_s})
    _install_sqlite_hooks(engine, sqlite_busy_timeout_s)
    return engine


def make_session_factory(url: str | URL | Engine, **engine_kwargs: Any) -> sessionmaker[Session]:
    """Return a session factory bound to a new engine (or to the given one).

    Sessions keep loaded attributes after commit (``expire_on_commit=False``)
    so callers can read returned rows after the repository function commits.
    """
    engine = url if isinstance(url, Engine) else make_engine(url, **engine_kwargs)
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str | URL) -> Config:
    """Alembic configuration pointing at ``registry/migrations`` and ``url``.

    Useful for other Alembic commands, e.g.
    ``command.revision(alembic_config(url), autogenerate=True, message="...")``.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is an interpolating ConfigParser, so '%' must be doubled.
    rendered = make_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade_database(url: str | URL, revision: str = "head") -> None:
    """Run the registry migrations up to ``revision`` (idempotent).

    The whole upgrade runs in one transaction on both SQLite and PostgreSQL, so a
    failed migration leaves the schema as it was. On PostgreSQL the transaction
    first takes an advisory lock (``pg_advisory_xact_lock``, released at its end):
    two processes upgrading at once run one after the other, and the second finds
    the schema already at ``revision``. (On SQLite, ``BEGIN IMMEDIATE`` serialises them.)
    """
    config = alembic_config(url)
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def current_revision(url: str | URL) -> str | None:
    """Return the database's current migration revision, ``None`` if unmigrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """The revision this code's models are written for: the newest migration."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "registry/migrations holds no migration"
    return head


def ensure_schema(url: str | URL, *, upgrade: bool) -> None:
    """Make sure the database has the schema this code expects, before any read or write.

    Nothing is changed when it has (no DDL, so a role without DDL rights can work). Otherwise, with
    ``upgrade`` the migrations run (`upgrade_database`); without it, `SchemaOutOfDate` says to run
    `medgate db upgrade`. A schema newer than this code is never touched.

    Raises:
        SchemaOutOfDate: the schema is behind and ``upgrade`` is false, or it is newer than this code.
    """
    current, head = current_revision(url), head_revision()
    if current == head:
        return
    shown = make_url(url).render_as_string(hide_password=True)
    scripts = ScriptDirectory.from_config(alembic_config(url))
    if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
        raise SchemaOutOfDate(f"registry {shown} has schema {current}, newer than this medgate's {head}: upgrade medgate")
    if not upgrade:
        raise SchemaOutOfDate(
            f"registry {shown} has schema {current or 'none'}, this medgate needs {head}: run `medgate db upgrade`"
        )
    upgrade_database(url)
