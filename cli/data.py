"""`medgate data`: intake and validation on their own, data-quality reports, dataset versions."""

from __future__ import annotations

import json
import secrets
import tempfile
from datetime import UTC, datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli.common import WorkspaceOpt, console, counted, find_run_file, print_run_file, sessions_for
from flows.settings import get_settings

data_app = typer.Typer(no_args_is_help=True, help="Data intake and quality: validate a source, find a report, list dataset versions.")
EXIT_BLOCKED = 3  # as `medgate run` when validation fails
LIBRARY_LOG = "libraries.log"  # in the run's folder: what pydicom, GX and others logged or warned (flows.logs)
LISTED = 10  # offending files printed per failed check; the report lists them all


@data_app.command("validate")
def validate(
    source: str = typer.Argument(..., help="DICOM or NIfTI folder with labels.csv, PNG/JPEG class folders, a MedMNIST .npz, or medmnist:<name>."),
    workspace: Path | None = WorkspaceOpt,
    keep: bool = typer.Option(False, "--keep", help="Keep the ingested manifest and images beside the report."),
    labels: str | None = typer.Option(None, "--labels", help="Another labels file (CSV, same columns as labels.csv) in the SOURCE folder."),
    name: str | None = typer.Option(None, "--name", help="The dataset's name in the stored report and summary (default: a salted pseudonym of its path)."),
) -> None:
    """Ingest SOURCE and validate it, nothing else: no dataset version, no training.

    Prints the verdict, every failed check with its offending files, every input skipped at intake,
    the report's path and, when a library logged or warned, the path of that log. Exit 0 when no
    blocking check failed (warnings allowed), 3 when one did, 2 when the source cannot be read at all.
    """
    from components.config import default_params, load_params
    from components.data.artifacts import write_text_atomically
    from components.stages.ingest import ingest_source
    from components.stages.validate import validate_manifest
    from flows.datasets import source_files
    from flows.drift import drift_against, production_baseline
    from flows.logs import library_log
    from flows.pipeline import model_name_for
    from flows.recording import SUMMARY_FILE
    from flows.sources import reveal

    from cli.retrain import resolve_source

    label = resolve_source(source, labels, workspace, name)  # exits 2 when the source cannot be found
    settings = get_settings(workspace)
    if (settings.workspace / "params.yaml").is_file():
        params = load_params(settings.workspace / "params.yaml")
    else:  # validating needs no workspace: the project's defaults, as a new workspace would start with
        console.print(f"no params.yaml in {settings.workspace}: validating with medgate's default settings")
        params = default_params()
    run_id = f"data-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    run_dir = settings.runs_dir / run_id
    log = run_dir / LIBRARY_LOG
    try:
        path = source_files(label, settings, params)
        if not path.exists():
            raise ValueError(f"{label}: no such file or folder")
        with tempfile.TemporaryDirectory(prefix="medgate-intake-") as scratch, library_log(log):
            out = run_dir / "ingest" if keep else Path(scratch) / "ingest"
            dataset = ingest_source(path, out, params.ingest, salt=settings.deid_salt, show_progress=True, label=label)
            model = model_name_for(label, params)
            with sessions_for(workspace)() as session:
                baseline = production_baseline(session, model)
            drift, note = drift_against(settings, params, model, baseline, dataset.manifest)
            result = validate_manifest(
                dataset.manifest, params.validate_, run_dir / "validate", list(dataset.problems),
                class_names=params.ingest.class_names, drift=drift, drift_note=note,
                window=(params.prepare.window_level, params.prepare.window_width),
            )
    except ValueError as exc:
        console.print(f"[red]error:[/] {reveal(settings, str(exc))}", highlight=False)
        _print_log(log)
        raise typer.Exit(2) from None
    report = json.loads(result.report_json.read_text())
    summary = {
        "run_id": run_id, "kind": "data-validate", "source": label, "status": "completed" if result.success else "failed",
        "dataset": {"kind": dataset.kind, "images": dataset.num_images, "patients": dataset.num_patients,
                    "skipped_inputs": len(dataset.problems), "manifest": str(dataset.manifest) if keep else None},
        "validation": {"success": result.success, "verdict": report["verdict"], "report": str(result.report_html),
                       "failed_expectations": list(result.failed_expectations), "warnings": list(result.warnings)},
    }
    write_text_atomically(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
    _print_validation(report, dataset.kind, dataset.num_images, result.report_html, lambda text: reveal(settings, text))
    _print_log(log)
    if not result.success:
        raise typer.Exit(EXIT_BLOCKED)


def _print_validation(report: dict[str, Any], kind: str, images: int, html_path: Path, show: Callable[[str], str]) -> None:
    """The verdict, failed checks and skipped inputs; `show` adds the real path to a file's pseudonym (this terminal only)."""
    colour = {"failed": "red", "passed with warnings": "yellow"}.get(report["verdict"], "green")
    console.print(f"data quality: [{colour}]{report['verdict'].upper()}[/] ({kind}, {counted(images, kind)})")
    for o in report["expectations"]:
        if o["success"] or o["severity"] == "report":
            continue
        tag = "[red]BLOCKING[/]" if o["severity"] == "blocking" else "[yellow]warning[/]"
        console.print(f"{tag} {o['check']}: {o['expectation']} - observed {o['observed']}", highlight=False, soft_wrap=True)
        for file in o["offending"][:LISTED]:
            console.print(f"    {show(str(file))}", highlight=False, markup=False, soft_wrap=True)
        if len(o["offending"]) > LISTED:
            console.print(f"    ... and {len(o['offending']) - LISTED} more in the report")
    skipped = report["skipped_inputs"]
    if skipped:
        console.print(f"skipped at intake ({len(skipped)}):")
        for p in skipped:
            console.print(f"    {show(p['file'])}: {p['reason']}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"report: {html_path}", highlight=False, soft_wrap=True)


def _print_log(log: Path) -> None:
    if log.exists():
        console.print(f"library messages (tracebacks, warnings): {log}", highlight=False, markup=False)


def find_quality_report(runs_dir: Path, run: str | None) -> Path:
    """The data-quality report of run `run` (its id or a unique prefix), or of the latest run that has one.

    Raises:
        LookupError: no such run, an ambiguous prefix, or a run that stopped before validation.
    """
    return find_run_file(
        runs_dir,
        run,
        "data-quality report",
        lambda summary: (summary.get("validation") or {}).get("report"),
        lambda summary: "it stopped before validation",
        "run `medgate data validate SOURCE` or `medgate run`",
    )


@data_app.command("report")
def report(
    run: str | None = typer.Argument(None, help="Run id or a unique prefix (default: the latest run with a data-quality report)."),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Print the path of a run's data-quality report (the HTML page; report.json lies beside it)."""
    print_run_file(find_quality_report, workspace, run)


@data_app.command("list")
def list_versions(
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Dataset versions in the registry: DVC hash, counts, validation verdict and report (the table shows
    each label's path beside it, from the workspace's local map)."""
    from flows.sources import reveal
    from registry import repository as repo

    with sessions_for(workspace)() as session:
        rows = [{
            "id": d.id, "source": d.source, "version": d.version, "kind": d.kind, "images": d.num_images,
            "patients": d.num_patients, "classes": d.counts, "validation": "passed" if d.validation_success else "failed",
            "report": d.report_path, "created_at": d.created_at.isoformat(),
        } for d in repo.list_datasets(session)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"dataset versions ({len(rows)})")
    for column in ("id", "source", "version", "kind", "images", "patients", "validation", "created", "report"):
        table.add_column(column)
    for r in rows:
        colour = "green" if r["validation"] == "passed" else "red"
        table.add_row(str(r["id"]), reveal(get_settings(workspace), r["source"]), r["version"][:12], r["kind"], str(r["images"]), str(r["patients"] or "-"),
                      f"[{colour}]{r['validation']}[/]", r["created_at"][:19], r["report"] or "-")
    console.print(table)
