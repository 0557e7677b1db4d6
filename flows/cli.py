"""`medgate`: the operator's command line. Heavy libraries are imported only by the commands that need them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from flows.settings import configure_offline, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="medgate: from medical images to a gated, served model.")
models_app = typer.Typer(no_args_is_help=True, help="Model versions in the registry.")
app.add_typer(models_app, name="models")
console = Console()

WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace folder (default: MEDGATE_WORKSPACE or the current folder).")


@app.callback()
def _main() -> None:
    configure_offline()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def print_summary(summary: dict[str, Any]) -> None:
    """The short end-of-run report: data quality, metrics, gate checks, model, production."""
    validation = summary.get("validation", {})
    verdict = "[green]passed[/]" if validation.get("success") else "[red]FAILED[/]"
    console.print(f"\n[bold]medgate run {summary['run_id']}[/] ({summary.get('status')})")
    if "dataset" in summary:
        d = summary["dataset"]
        console.print(f"dataset: {d['source']} ({d['kind']}), version {d['version']}, {d['images']} images of {d['patients']} patients")
    if validation:
        console.print(f"data quality: {verdict}; report {validation.get('report')}")
    if metrics := summary.get("metrics"):
        keys = ("auc", "auc_ci_lower", "auc_ci_upper", "accuracy", "sensitivity", "specificity", "f1", "ece")
        console.print("test metrics: " + ", ".join(f"{k} {_fmt(metrics.get(k))}" for k in keys if k in metrics))
    if gate := summary.get("gate"):
        table = Table(title=f"gate: {'[green]PROMOTE[/]' if gate['promote'] else '[red]REFUSED[/]'} ({gate['reason']})")
        for column in ("check", "metric", "value", "comparison", "threshold", "verdict"):
            table.add_column(column)
        for c in gate["checks"]:
            colour = {"pass": "green", "fail": "red"}.get(c["verdict"], "yellow")
            table.add_row(c["kind"], c["metric"], _fmt(c["value"]), c["comparison"], _fmt(c["threshold"]), f"[{colour}]{c['verdict']}[/]")
        console.print(table)
    if "model_version" in summary:
        console.print(f"model: {summary['model_name']} v{summary['model_version']}, bento {summary.get('bento_tag') or '-'}")
        prod = summary.get("production") or {}
        console.print(f"production: {prod.get('model')} v{_fmt(prod.get('version'))} (bento {prod.get('bento_tag') or '-'})")
    if timings := summary.get("timings_s"):
        console.print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in timings.items()) + (f"; reused: {', '.join(summary['stages_reused'])}" if summary.get("stages_reused") else ""))
    if summary.get("error"):
        console.print(f"[red]error:[/] {summary['error']}")
    console.print(f"summary: {summary.get('summary_path')}")


@app.command()
def run(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="DICOM folder with labels.csv, PNG/JPEG class folders, or a MedMNIST .npz; default: the embedded cohort."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Run the training flow: ingest, validate, prepare, train, evaluate, gate, package, promote."""
    from flows.pipeline import DEFAULT_SOURCE, ValidationFailed, training_flow

    source = DEFAULT_SOURCE
    if dataset:
        path = Path(dataset).expanduser()
        if not path.exists():
            console.print(f"[red]error:[/] dataset {dataset}: no such file or folder")
            raise typer.Exit(2)
        source = str(path.resolve())
    try:
        summary = training_flow(source=source, workspace=str(workspace) if workspace else None)
    except ValidationFailed as exc:
        console.print(f"[red]validation failed[/]: {exc}")
        raise typer.Exit(3)
    except Exception as exc:  # the flow already recorded the failure; say what and where
        console.print(f"[red]run failed[/]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1)
    print_summary(summary)


def _sessions(workspace: Path | None):
    from registry.db import make_session_factory, upgrade_database

    url = get_settings(workspace).database_url
    upgrade_database(url)
    return make_session_factory(url)


@models_app.command("list")
def models_list(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    name: Optional[str] = typer.Option(None, "--name", help="Only this model name."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Model versions with stage, metrics, dataset version and creation time."""
    from registry import repository as repo

    with _sessions(workspace)() as session:
        rows = [
            {
                "name": mv.name,
                "version": mv.version,
                "stage": mv.stage,
                "metrics": dict(mv.metrics or {}),
                "dataset_version": mv.dataset_version,
                "bento_tag": mv.bento_tag,
                "created_at": mv.created_at.isoformat(),
            }
            for mv in repo.list_versions(session, name)
        ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="model versions")
    for column in ("name", "version", "stage", "auc", "accuracy", "dataset", "bento", "created"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], str(r["version"]), r["stage"], _fmt(r["metrics"].get("auc")), _fmt(r["metrics"].get("accuracy")),
                      r["dataset_version"][:12], r["bento_tag"] or "-", r["created_at"][:19])
    console.print(table)


@app.command()
def serve(
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port on 127.0.0.1 (default: params serve.port)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name (default: the most recently promoted)."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Serve the production model's Bento on 127.0.0.1."""
    from components.config import load_params
    from registry import repository as repo

    settings = get_settings(workspace)
    with _sessions(workspace)() as session:
        production = repo.get_champion(session, model) if model else repo.latest_production(session)
        if production is None or not production.bento_tag:
            console.print(f"[red]error:[/] no production model{' named ' + model if model else ''} with a Bento; run `medgate run` first")
            raise typer.Exit(2)
        bento_tag, label = production.bento_tag, f"{production.name} v{production.version}"
    port = port or load_params(settings.workspace / "params.yaml").serve.port
    from components.package import serve_bento

    console.print(f"serving {label} (bento {bento_tag}) on http://127.0.0.1:{port}")
    raise typer.Exit(serve_bento(bento_tag, port))


if __name__ == "__main__":
    app()
