"""`medgate report [RUN]`: the path of a run's HTML report (written by the flow, see components.documents.report)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import WorkspaceOpt, find_run_file, print_run_file


def find_report(runs_dir: Path, run: str | None) -> Path:
    """The HTML report of run `run` (its id or a unique prefix), or of the latest run that has one.

    Raises:
        LookupError: no such run, an ambiguous prefix, or a run without a report (with the reason).
    """
    return find_run_file(
        runs_dir,
        run,
        "report",
        lambda summary: summary.get("report"),
        lambda summary: f"{summary.get('status')}: {summary.get('error') or 'it stopped before evaluation'}",
        "run `medgate run` first",
    )


def report(
    run: str | None = typer.Argument(None, help="Run id or a unique prefix (default: the latest run with a report)."),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Print the path of a run's HTML report (ROC, confusion, calibration, curves, subgroups, baseline, gate)."""
    print_run_file(find_report, workspace, run)
