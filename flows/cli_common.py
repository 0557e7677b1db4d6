"""Pieces every `medgate` command module shares: the console, the workspace option, registry sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from flows.settings import get_settings

console = Console()
WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace folder (default: MEDGATE_WORKSPACE or the current folder).")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def sessions_for(workspace: Path | None):
    """A session factory on the workspace's registry, migrated to the current schema."""
    from registry.db import make_session_factory, upgrade_database

    url = get_settings(workspace).database_url
    upgrade_database(url)
    return make_session_factory(url)
