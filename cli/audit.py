"""`medgate audit`: the append-only trail of stage changes (who, when, what, why)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import WorkspaceOpt, console, sessions_for


def audit(
    model: Optional[str] = typer.Option(None, "--model", help="Only this model name."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Every stage change, oldest first: registrations, promotions, overrides, rejections, rollbacks."""
    from registry import repository as repo

    with sessions_for(workspace)() as session:
        numbers = {mv.id: mv.version for mv in repo.list_versions(session, model)}
        rows = [
            {
                "at": entry.at.isoformat(timespec="seconds"),
                "actor": entry.actor,
                "action": entry.action,
                "model": entry.model_name,
                "version": numbers.get(entry.model_version_id),
                "from_stage": entry.from_stage,
                "to_stage": entry.to_stage,
                "reason": entry.reason,
            }
            for entry in repo.audit_trail(session, model)
        ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"no audit entries{' for ' + model if model else ''}")
        return
    table = Table(title=f"audit trail{' of ' + model if model else ''}")
    for column in ("at (UTC)", "actor", "action", "model", "from -> to", "reason"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["at"], escape(r["actor"]), r["action"], f"{r['model']} v{r['version']}" if r["model"] else "-",
                      f"{r['from_stage'] or '-'} -> {r['to_stage'] or '-'}", escape(r["reason"]))
    console.print(table)
