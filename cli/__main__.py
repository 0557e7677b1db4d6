"""`python -m cli`: the `medgate` command."""

from cli.main import app

app()
