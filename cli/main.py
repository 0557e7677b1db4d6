"""`medgate`: the operator's command line. Heavy libraries are imported only by the commands that need them."""

from __future__ import annotations

import typer

from cli.data import data_app
from cli.db import db_app
from cli.audit import audit
from cli.deploy import deploy, serve
from cli.models import models_app
from cli.report import report
from cli.retrain import retrain, run, schedule, server, sweep, watch
from cli.ui import ui
from cli.users import users_app
from cli.workspace import init
from flows.settings import configure_offline

app = typer.Typer(add_completion=False, no_args_is_help=True, help="medgate: from medical images to a gated, served model.")
app.command("init")(init)
app.command("run")(run)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(db_app, name="db")
app.command("audit")(audit)
app.command("report")(report)
app.command("serve")(serve)
app.command("deploy")(deploy)
app.command("retrain")(retrain)
app.command("schedule")(schedule)
app.command("watch")(watch)
app.command("server")(server)
app.command("sweep")(sweep)
app.command("ui")(ui)
app.add_typer(users_app, name="users")


@app.callback()
def _main() -> None:
    configure_offline()


if __name__ == "__main__":
    app()
