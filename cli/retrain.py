"""`medgate retrain | schedule | watch | server | sweep`: retraining an operator can leave running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from cli.common import WorkspaceOpt, console, print_summary, sessions_for, stdout_to_stderr
from flows.settings import get_settings

EXIT_BUSY = 4
WaitOpt = typer.Option(0.0, "--wait", help="Seconds to wait for another run on this workspace to finish (default: refuse at once).")
JsonOpt = typer.Option(False, "--json", help="Print the run's summary as JSON, and nothing else, on stdout (progress and messages on stderr).")
NameOpt = typer.Option(None, "--name", help="The dataset's name in every stored place (registry, reports, Prefect, notifications); default: a salted pseudonym of its path, which can carry a patient's name.")


def resolve_source(dataset: str | None, labels: str | None = None, workspace: Path | None = None,
                   name: str | None = None) -> str:
    """The flow's `source` for a --dataset value: an embedded cohort, ``medmnist:<name>``, or the label of
    an existing path (`name`, else a salted pseudonym of the path, which can carry a patient's name),
    recorded in the workspace's local map (flows.sources); a label an earlier run registered stays as it is.

    With `labels` (--labels FILE), the source is that labels file inside the dataset folder, which
    ingest reads in place of its labels.csv."""
    from flows.datasets import CINE_SOURCE
    from flows.pipeline import DEFAULT_SOURCE
    from flows.sources import register_source, registered_path

    settings = get_settings(workspace)
    known = registered_path(settings, dataset) if dataset else None  # a label of an earlier run (retrain)
    folder = known if known is not None else Path(dataset).expanduser() if dataset else None
    if labels and (folder is None or not folder.is_dir()):
        console.print("[red]error:[/] --labels needs --dataset naming a folder")
        raise typer.Exit(2)
    if not dataset or dataset == DEFAULT_SOURCE:
        return DEFAULT_SOURCE
    if dataset.startswith("medmnist:"):  # resolved in the data root by the flow (flows.datasets.source_path)
        return dataset
    if dataset == CINE_SOURCE:  # generated in the workspace by the flow
        return dataset
    if dataset.startswith("cohort:"):  # an embedded audio cohort, generated in the workspace by the flow
        from flows.datasets import AUDIO_COHORTS

        if dataset not in AUDIO_COHORTS:
            console.print(f"[red]error:[/] dataset {dataset}: no such cohort; embedded: {', '.join(AUDIO_COHORTS)}")
            raise typer.Exit(2)
        if AUDIO_COHORTS[dataset]:
            from components.demo.dictation import EngineMissing, require_engine

            try:
                require_engine()
            except EngineMissing as exc:
                console.print(f"[red]error:[/] {exc}")
                raise typer.Exit(2)
        return dataset
    assert folder is not None
    path = folder
    if labels:
        path = path / labels
        if path.suffix.lower() != ".csv" or not path.is_file():
            console.print(f"[red]error:[/] --labels {labels}: no such .csv file in {dataset}", highlight=False)
            raise typer.Exit(2)
    if not path.exists():
        console.print(f"[red]error:[/] dataset {dataset}: no such file or folder", highlight=False)
        raise typer.Exit(2)
    if known is not None and not labels and not name:
        return dataset
    try:
        return register_source(settings, str(path.resolve()), name)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


@contextmanager
def flow_errors(workspace: Path | None = None) -> Iterator[None]:
    """Exit 3 on failed validation, 4 on a busy workspace, 1 on any other failure, saying which."""
    from flows.lock import WorkspaceBusy
    from flows.pipeline import ValidationFailed
    from flows.sources import reveal

    try:
        yield
    except ValidationFailed as exc:
        console.print(f"[red]validation failed[/]: {exc}")
        raise typer.Exit(3)
    except WorkspaceBusy as exc:
        console.print(f"[red]refused[/]: {exc}")
        raise typer.Exit(EXIT_BUSY)
    except Exception as exc:  # the flow already recorded the failure; say what and where (paths shown here only)
        console.print(f"[red]run failed[/]: {reveal(get_settings(workspace), f'{type(exc).__name__}: {exc}')}", highlight=False)
        raise typer.Exit(1)


def launch(source: Callable[[], str], workspace: Path | None, trigger: str, wait_s: float, as_json: bool = False) -> dict[str, Any]:
    """Run the training flow on `source()` and print its summary (exit codes: `flow_errors`); with
    `as_json`, the summary as JSON is all that goes to stdout.

    Prefect's API server for the run (flows.prefect_api) starts first: it boots while `source()`
    and the imports below run.
    """
    from cli.workspace import require_workspace
    from flows.prefect_api import start_prefect_api

    require_workspace(get_settings(workspace).workspace)
    with stdout_to_stderr() if as_json else nullcontext():
        api = start_prefect_api()
        source_path = source()
        from flows.retrain import run_training

        with flow_errors(workspace):
            if api is not None:
                api.wait_ready()
            summary = run_training(source_path, str(workspace) if workspace else None, trigger, wait_s)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary, workspace)
    return summary


def last_source(workspace: Path | None) -> str | None:
    """The source of the workspace's most recent run that recorded a dataset."""
    from sqlalchemy import select

    from registry.models import Dataset, Run

    with sessions_for(workspace)() as session:
        stmt = select(Dataset.source).join(Run, Run.dataset_id == Dataset.id).order_by(Run.id.desc()).limit(1)
        return session.scalar(stmt)


def training_command(trigger: str, default_source: Callable[[Path | None], str | None], dataset_help: str,
                     doc: str) -> Callable[..., None]:
    """A command that runs the training flow with `trigger` on `--dataset`, else on `default_source(workspace)`,
    else on the embedded cohort (`medgate run` and `medgate retrain` differ only there)."""
    def command(
        dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help=dataset_help),
        labels: Optional[str] = typer.Option(None, "--labels", help="Another labels file (CSV, same columns as labels.csv) in the --dataset folder."),
        name: Optional[str] = NameOpt,
        workspace: Optional[Path] = WorkspaceOpt,
        wait: float = WaitOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        launch(lambda: resolve_source(dataset or default_source(workspace), labels, workspace, name), workspace, trigger,
               wait, as_json)

    command.__doc__ = doc
    return command


run = training_command(
    "manual", lambda workspace: None,
    "DICOM or NIfTI folder with labels.csv, PNG/JPEG class folders, a MedMNIST .npz, medmnist:<name>, video clips "
    "(MP4/MOV/AVI, DICOM cine) with labels.csv, or cohort:cine (the embedded cine cohort); default: the embedded CT cohort.",
    "Run the training flow: ingest, validate, prepare, train, evaluate, gate, package, promote.",
)
retrain = training_command(
    "retrain", last_source,
    "Source to retrain on (default: the source of the last run, else the embedded cohort).",
    """A retraining run on the newest content of the data (same flow as `medgate run`, trigger `retrain`).

    Unchanged data, code and params train nothing: DVC reuses every stage, and a model identical to
    production is reported as reused, not registered again.
    """,
)


def schedule(
    cron: Optional[str] = typer.Option(None, "--cron", help='Cron expression, e.g. "0 3 * * *" (default: retrain.cron in params.yaml).'),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Source each scheduled run retrains on (default: the embedded cohort)."),
    pool: Optional[str] = typer.Option(
        None, "--pool", help="Register the deployment on this Prefect work pool and exit: its workers run it (without a cron: when started).",
    ),
    list_: bool = typer.Option(False, "--list", help="Show medgate's schedules on the Prefect server and their next runs."),
    as_json: bool = typer.Option(False, "--json", help="With --list: JSON."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Register a Prefect deployment that retrains on a cron schedule, and serve it (runs until Ctrl-C);
    with --pool, leave it to that work pool's workers instead.

    Needs a Prefect server (`medgate server`, then PREFECT_API_URL=http://127.0.0.1:4200/api).
    """
    from components.config import load_params
    from flows.retrain import NoPrefectServer, deploy_to_pool, list_schedules, retrain_deployment, serve_deployments

    try:
        if list_:
            _print_schedules(list_schedules(), as_json)
            return
        ws = get_settings(workspace).workspace
        expr = cron or load_params(ws / "params.yaml").retrain.cron or None
        if not expr and not pool:
            console.print("[red]error:[/] give --cron EXPR (or set retrain.cron in params.yaml)")
            raise typer.Exit(2)
        if expr:
            _check_cron(expr)
        deployment = retrain_deployment(ws, resolve_source(dataset, workspace=workspace), expr)
        if not pool:
            serve_deployments(deployment)
            return
        try:
            name = deploy_to_pool(deployment, pool)
        except ValueError as exc:
            console.print(f"[red]error:[/] {exc} (prefect work-pool create {pool} --type process)")
            raise typer.Exit(2)
        console.print(f"deployment {name} on work pool {pool}" + (f", cron {expr!r}" if expr else ", runs when started"))
        console.print(f"start a run:  prefect deployment run '{name}';  a worker:  prefect worker start --pool {pool}")
    except NoPrefectServer as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2)


def _check_cron(expr: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expr)
    except ValueError as exc:
        console.print(f"[red]error:[/] --cron {expr!r} is not a valid cron expression: {exc}")
        raise typer.Exit(2)


def _print_schedules(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        console.print("no medgate schedules on this Prefect server (medgate schedule --cron EXPR, medgate watch SOURCE --serve)")
        return
    table = Table(title="medgate schedules")
    for column in ("deployment", "schedule", "served", "source", "next runs"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["deployment"], "; ".join(r["schedules"]) or "-", "yes" if r["served"] else "no",
            str(r["parameters"].get("source", "-")),
            "\n".join(r["next_runs"]) + (" (computed)" if r["next_runs"] and r["next_runs_from"] == "computed" else "") or "-",
        )
    console.print(table)


def watch(
    source: str = typer.Argument(..., help="Folder or file to watch (DICOM folder with labels.csv, PNG class folders, .npz)."),
    interval: Optional[float] = typer.Option(None, "--interval", help="Seconds between looks (default: retrain.watch_interval_s)."),
    once: bool = typer.Option(False, "--once", help="Look once, retrain if changed, and exit."),
    serve: bool = typer.Option(False, "--serve", help="Register a Prefect deployment that looks on that interval, and serve it."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Retrain whenever SOURCE's content changes (new, changed or removed files, by content hash)."""
    from components.config import load_params
    from flows.retrain import NoPrefectServer, serve_deployments, watch_deployment, watch_flow

    label = resolve_source(source, workspace=workspace)
    ws = get_settings(workspace).workspace
    every = interval if interval is not None else load_params(ws / "params.yaml").retrain.watch_interval_s
    if serve:
        try:
            serve_deployments(watch_deployment(ws, label, every))
        except NoPrefectServer as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2)
        return
    console.print(f"watching {source} ({label}) every {every:.0f} s (content hash); Ctrl-C to stop", highlight=False)
    while True:
        try:
            outcome = watch_flow(label, str(ws))
            if outcome["changed"]:
                print_summary(outcome["run"], workspace)
        except Exception as exc:  # one failed run must not end the watch; it is recorded and retried
            console.print(f"[red]run failed[/]: {type(exc).__name__}: {exc}")
            if once:
                raise typer.Exit(1)
        if once:
            return
        time.sleep(every)


def server(
    port: int = typer.Option(4200, "--port"),
    database_url: Optional[str] = typer.Option(
        None, "--database-url", envvar="MEDGATE_PREFECT_DATABASE_URL",
        help="The server's database, e.g. postgresql+asyncpg://user:pw@host:5432/prefect (default: SQLite in PREFECT_HOME).",
    ),
) -> None:
    """Start a Prefect server on 127.0.0.1 (the UI and the API that schedules need); Ctrl-C stops it."""
    env = dict(os.environ)
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    url = f"http://127.0.0.1:{port}"
    console.print(f"Prefect server on {url} (UI), database {'PostgreSQL' if database_url and database_url.startswith('postgresql') else 'SQLite'}")
    console.print(f"point runs at it:  export PREFECT_API_URL={url}/api")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env)
    try:
        raise typer.Exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        raise typer.Exit(proc.wait(timeout=30))


def sweep(
    grid: list[str] = typer.Option(..., "--grid", "-g", help="A train param and its values, e.g. -g learning_rate=0.001,0.003 -g model.width=16,32."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Source (default: the embedded cohort)."),
    workspace: Optional[Path] = WorkspaceOpt,
    wait: float = WaitOpt,
) -> None:
    """A grid of training trials fanned out over the task runner; the best (validation AUC) goes through the gate."""
    from flows.distributed import configured
    from flows.sweep import parse_grid, sweep_flow

    try:
        axes = parse_grid(grid)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2)
    ws = get_settings(workspace).workspace
    with flow_errors(workspace):
        result = configured(sweep_flow, ws)(resolve_source(dataset, workspace=workspace), str(ws), axes, wait)
    table = Table(title=f"sweep: {len(result['trials'])} trials, best {result['best']['overrides']}")
    for column in ("trial", "overrides", "validation AUC", "best epoch"):
        table.add_column(column)
    for t in result["trials"]:
        table.add_row(str(t["trial"]), json.dumps(t["overrides"]), f"{t['val_auc']:.4f}", str(t["best_epoch"]))
    console.print(table)
    print_summary(result["run"], workspace)
