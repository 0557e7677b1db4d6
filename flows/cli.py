"""`medgate`: the operator's command line. Heavy libraries are imported only by the commands that need them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from flows.cli_common import WorkspaceOpt, _fmt, console
from flows.cli_data import data_app
from flows.cli_audit import audit
from flows.cli_deploy import deploy, serve
from flows.cli_models import models_app
from flows.cli_report import report
from flows.cli_retrain import WaitOpt, launch, resolve_source, retrain, schedule, server, sweep, watch
from flows.settings import configure_offline

app = typer.Typer(add_completion=False, no_args_is_help=True, help="medgate: from medical images to a gated, served model.")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.command("audit")(audit)
app.command("report")(report)
app.command("serve")(serve)
app.command("deploy")(deploy)
app.command("retrain")(retrain)
app.command("schedule")(schedule)
app.command("watch")(watch)
app.command("server")(server)
app.command("sweep")(sweep)

@app.callback()
def _main() -> None:
    configure_offline()


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
        if training := summary.get("training"):
            resumed = f", resumed after epoch {training['resumed_after_epoch']}" if training.get("resumed_after_epoch") else ""
            console.print(f"training: {training['family']}, epoch {training['best_epoch']} of {training['epochs_run']} kept ({training['stopped']}{resumed}), "
                          f"{training['train_seconds']:.0f} s, {training['images_per_second']:.0f} images/s on {training['device']}")
        if "baseline_auc" in metrics:
            console.print(f"classical baseline: auc {_fmt(metrics['baseline_auc'])}, accuracy {_fmt(metrics.get('baseline_accuracy'))}; network auc - baseline {_fmt(metrics.get('auc_minus_baseline'))}")
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
    if summary.get("report"):
        console.print(f"report: {summary['report']}")
    console.print(f"summary: {summary.get('summary_path')}")


@app.command()
def run(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="DICOM or NIfTI folder with labels.csv, PNG/JPEG class folders, a MedMNIST .npz or medmnist:<name>; default: the embedded cohort."),
    workspace: Optional[Path] = WorkspaceOpt,
    wait: float = WaitOpt,
) -> None:
    """Run the training flow: ingest, validate, prepare, train, evaluate, gate, package, promote."""
    launch(lambda: resolve_source(dataset), workspace, "manual", wait)


if __name__ == "__main__":
    app()
