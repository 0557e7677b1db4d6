"""Pieces every `medgate` command module shares: the console, the workspace option, registry sessions."""

from __future__ import annotations

import json
from collections.abc import Callable
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


def find_run_file(
    runs_dir: Path, run: str | None, what: str, path_of: Callable[[dict], Any], why_missing: Callable[[dict], str], hint: str
) -> Path:
    """The file `path_of(summary)` names for run `run` (its id or a unique prefix), or for the latest run
    that has one; `what` names it in messages.

    Raises:
        LookupError: no such run, an ambiguous prefix, or a run without the file (`why_missing(summary)`).
    """
    summaries = sorted(runs_dir.glob("*/summary.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    if run is not None:
        summaries = [p for p in summaries if p.parent.name == run] or [
            p for p in summaries if p.parent.name.startswith(run)
        ]
        if not summaries:
            raise LookupError(f"no run {run!r} in {runs_dir}")
        if len(summaries) > 1:
            raise LookupError(f"run id prefix {run!r} matches {len(summaries)} runs; give more characters")
    for path in summaries:
        summary = json.loads(path.read_text())
        found = path_of(summary)
        if found and Path(found).is_file():
            return Path(found)
        if run is not None:
            raise LookupError(f"run {path.parent.name} has no {what} ({why_missing(summary)})")
    raise LookupError(f"no run with a {what} in {runs_dir}; {hint}")
