"""`medgate report [RUN]`: the path of a run's HTML report (written by the flow, see components.report)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli_common import WorkspaceOpt, console
from flows.settings import get_settings


def find_report(runs_dir: Path, run: str | None) -> Path:
    """The report of run `run` (its id or a unique prefix), or of the latest run that has one.

    Raises:
        LookupError: no such run, an ambiguous prefix, or a run without a report (with the reason).
    """
    summaries = sorted(runs_dir.glob("*/summary.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    if run is not None:
        summaries = [p for p in summaries if p.parent.name.startswith(run)]
        if not summaries:
            raise LookupError(f"no run {run!r} in {runs_dir}")
        if len(summaries) > 1 and not any(p.parent.name == run for p in summaries):
            raise LookupError(f"run id prefix {run!r} matches {len(summaries)} runs; give more characters")
        summaries = [p for p in summaries if p.parent.name == run] or summaries
    for path in summaries:
        summary = json.loads(path.read_text())
        if summary.get("report") and Path(summary["report"]).is_file():
            return Path(summary["report"])
        if run is not None:
            reason = summary.get("error") or "it stopped before evaluation"
            raise LookupError(f"run {path.parent.name} has no report ({summary.get('status')}: {reason})")
    raise LookupError(f"no run with a report in {runs_dir}; run `medgate run` first")


def report(
    run: str | None = typer.Argument(None, help="Run id or a unique prefix (default: the latest run with a report)."),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Print the path of a run's HTML report (ROC, confusion, calibration, curves, subgroups, baseline, gate)."""
    try:
        path = find_report(get_settings(workspace).runs_dir, run)
    except LookupError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    print(path)
