"""`medgate`: the operator's command line. Heavy libraries are imported only by the commands that need them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import WorkspaceOpt
from cli.data import data_app
from cli.audit import audit
from cli.deploy import deploy, serve
from cli.models import models_app
from cli.report import report
from cli.retrain import JsonOpt, WaitOpt, launch, resolve_source, retrain, schedule, server, sweep, watch
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


@app.command()
def run(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="DICOM, NIfTI or WAV/FLAC/OGG folder with labels.csv, PNG/JPEG or recording class folders, a MedMNIST .npz, medmnist:<name>, cohort:dictation or cohort:tones; default: the embedded CT cohort."),
    workspace: Optional[Path] = WorkspaceOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run the training flow: ingest, validate, prepare, train, evaluate, gate, package, promote."""
    launch(lambda: resolve_source(dataset), workspace, "manual", wait, as_json)


if __name__ == "__main__":
    app()
