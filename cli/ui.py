"""`medgate ui`: the review console (console/) on this workspace's registry and runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import WorkspaceOpt, console, sessions_for
from flows.settings import get_settings

DEFAULT_PORT = 8400


def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; off loopback at least one user must exist."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port to listen on."),
    allowed_host: Optional[list[str]] = typer.Option(
        None, "--allowed-host", help="A host name browsers reach the console by (repeatable; besides loopback and --host)."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Browse runs, data-quality reports, models and the audit log in a browser; approvers sign off candidates."""
    import uvicorn

    from console.app import create_app
    from console.auth import console_secret
    from registry.users import count_users
    from services.origin import LOOPBACK_NAMES, allowed_hosts

    settings = get_settings(workspace)
    sessions = sessions_for(workspace)
    with sessions() as session:
        users = count_users(session)
    loopback = host in LOOPBACK_NAMES
    if not loopback and users == 0:
        console.print(f"[red]error:[/] the console on {host} would be open to the network with no user: "
                      "add one first (medgate users add NAME --role admin)")
        raise typer.Exit(2)
    # On loopback (or where names are given) browsers' DNS-rebinding and cross-site requests are refused.
    names = allowed_hosts(host, allowed_host or ()) if loopback or allowed_host else None
    app = create_app(sessions, settings.workspace, console_secret(settings.state_dir), names, anonymous=loopback)
    who = f"{users} user(s); sign in" if users else "no users yet: read-only (medgate users add NAME --role approver)"
    console.print(f"medgate console on http://{host}:{port}/ ({who})", soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
