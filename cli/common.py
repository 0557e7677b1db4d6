"""Pieces every `medgate` command module shares: the console, the workspace option, registry sessions."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, ConsoleDimensions
from rich.table import Table

from flows.settings import get_settings

# Width of output to a pipe or a file: wider than any line medgate prints, so nothing wraps.
UNWRAPPED_WIDTH = 100_000


class UnwrappedConsole(Console):
    """rich's Console, unchanged on a terminal; to a pipe or a file (CI logs, `| tee`, cron mail) it
    never wraps, so a path stays on one line and a table keeps every cell whole."""

    @Console.size.getter
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED_WIDTH, size.height)


console = UnwrappedConsole()
WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace folder (default: MEDGATE_WORKSPACE or the current folder).")


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what is written to stdout inside the block to stderr: this process's prints and consoles
    and the output of the subprocesses it starts (they inherit file descriptor 1)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def sessions_for(workspace: Path | None):
    """A session factory on the workspace's registry, once its schema is this medgate's.

    A SQLite registry (a file of the workspace's own) is migrated on first use; any other database
    only by `medgate db upgrade` (or the flow's first run): a command that finds it behind says so
    and exits with status 2, changing nothing.
    """
    from sqlalchemy.engine import make_url

    from registry.db import ensure_schema, make_session_factory
    from registry.errors import SchemaOutOfDate

    url = get_settings(workspace).database_url
    try:
        ensure_schema(url, upgrade=make_url(url).get_backend_name() == "sqlite")
    except SchemaOutOfDate as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
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


def print_run_file(find: Callable[[Path, str | None], Path], workspace: Path | None, run: str | None) -> None:
    """Print the path `find(runs_dir, run)` returns; on a LookupError print the error and exit with 2."""
    try:
        path = find(get_settings(workspace).runs_dir, run)
    except LookupError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    print(path)


ITEM_NOUNS = {"video": "clips", "audio": "recordings"}


def counted(n: int, source_kind: str) -> str:
    """`n` inputs of a dataset of `source_kind` (ingest's kind), named as such: "12 clips", "480 recordings"."""
    return f"{n} {ITEM_NOUNS.get(source_kind, 'images')}"


def print_summary(summary: dict[str, Any], workspace: Path | None = None) -> None:
    """The short end-of-run report: data quality, metrics, gate checks, model, production; a source's
    label and file pseudonyms are followed by their paths (the workspace's local map; this terminal only)."""
    from flows.sources import reveal

    def show(text: str) -> str:
        return reveal(get_settings(workspace), text)

    validation = summary.get("validation", {})
    verdict = "[green]passed[/]" if validation.get("success") else "[red]FAILED[/]"
    console.print(f"\n[bold]medgate run {summary['run_id']}[/] ({summary.get('status')})")
    if "dataset" in summary:
        d = summary["dataset"]
        console.print(f"dataset: {show(d['source'])} ({d['kind']}), version {d['version']}, {counted(d['images'], d['kind'])} of {d['patients']} patients")
    if validation:
        console.print(f"data quality: {verdict}; report {validation.get('report')}")
    if metrics := summary.get("metrics"):
        keys = ("auc", "auc_ci_lower", "auc_ci_upper", "accuracy", "sensitivity", "specificity", "f1", "ece")
        console.print("test metrics: " + ", ".join(f"{k} {fmt(metrics.get(k))}" for k in keys if k in metrics))
        if training := summary.get("training"):
            resumed = f", resumed after epoch {training['resumed_after_epoch']}" if training.get("resumed_after_epoch") else ""
            console.print(f"training: {training['family']}, epoch {training['best_epoch']} of {training['epochs_run']} kept ({training['stopped']}{resumed}), "
                          f"{training['train_seconds']:.0f} s, {training['images_per_second']:.0f} images/s on {training['device']}")
        if "baseline_auc" in metrics:
            console.print(f"classical baseline: auc {fmt(metrics['baseline_auc'])}, accuracy {fmt(metrics.get('baseline_accuracy'))}; network auc - baseline {fmt(metrics.get('auc_minus_baseline'))}")
    if gate := summary.get("gate"):
        table = Table(title=f"gate: {'[green]PROMOTE[/]' if gate['promote'] else '[red]REFUSED[/]'} ({gate['reason']})")
        for column in ("check", "metric", "value", "comparison", "threshold", "verdict"):
            table.add_column(column)
        for c in gate["checks"]:
            colour = {"pass": "green", "fail": "red"}.get(c["verdict"], "yellow")
            table.add_row(c["kind"], c["metric"], fmt(c["value"]), c["comparison"], fmt(c["threshold"]), f"[{colour}]{c['verdict']}[/]")
        console.print(table)
    if "model_version" in summary:
        console.print(f"model: {summary['model_name']} v{summary['model_version']}, bento {summary.get('bento_tag') or '-'}")
        prod = summary.get("production") or {}
        console.print(f"production: {prod.get('model')} v{fmt(prod.get('version'))} (bento {prod.get('bento_tag') or '-'})")
        if summary.get("awaiting_approval"):
            console.print(f"[yellow]awaiting approval:[/] {summary['model_name']} v{summary['awaiting_approval']} passed the gate and "
                          f"waits for an approver (medgate models approve {summary['model_name']}:{summary['awaiting_approval']}, or medgate ui)")
    if timings := summary.get("timings_s"):
        console.print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in timings.items()) + (f"; reused: {', '.join(summary['stages_reused'])}" if summary.get("stages_reused") else ""))
    if summary.get("error"):
        console.print(f"[red]error:[/] {show(summary['error'])}", highlight=False)
    if summary.get("report"):
        console.print(f"report: {summary['report']}")
    console.print(f"summary: {summary.get('summary_path')}")
