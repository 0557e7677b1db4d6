"""Alembic environment for the medgate registry.

Run through :func:`registry.db.upgrade_database`, which hands over an open
connection, or from the command line::

    alembic -c registry/alembic.ini -x url=sqlite:///.medgate/registry.db upgrade head
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from registry.db import make_engine
from registry.models import Base

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None:  # the CLI with registry/alembic.ini, not upgrade_database()
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no registry database URL: pass `-x url=...` or set sqlalchemy.url")
    return url


def _configure(connection: Connection) -> None:
    # Both SQLite (with our explicit BEGIN) and PostgreSQL roll back DDL, so the
    # whole upgrade is one transaction.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit the migration SQL without a database (``alembic upgrade --sql``)."""
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate using the caller's connection, or a new engine from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = make_engine(_database_url())
    try:
        with engine.begin() as new_connection:
            _configure(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
