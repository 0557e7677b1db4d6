"""`medgate db upgrade`: the one command that migrates the registry's schema."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import WorkspaceOpt, console
from flows.settings import get_settings

db_app = typer.Typer(no_args_is_help=True, help="The registry database.")


@db_app.command("upgrade")
def upgrade(workspace: Path | None = WorkspaceOpt) -> None:
    """Migrate the registry (MEDGATE_DATABASE_URL, or the workspace's SQLite file) to this medgate's schema.

    Safe to run from several processes at once: on PostgreSQL they take turns under an advisory lock.
    Other commands only check the schema (a SQLite registry migrates itself on first use).
    """
    from sqlalchemy.engine import make_url

    from registry.db import current_revision, head_revision, upgrade_database

    url = get_settings(workspace).database_url
    shown = make_url(url).render_as_string(hide_password=True)
    before = current_revision(url)
    upgrade_database(url)
    after = current_revision(url)
    if before == after:
        console.print(f"registry {shown}: schema {after} is current (this medgate's is {head_revision()})", highlight=False)
    else:
        console.print(f"registry {shown}: schema {before or 'none'} -> {after}", highlight=False)
