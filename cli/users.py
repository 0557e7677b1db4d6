"""`medgate users add|list|remove`: the review console's accounts (kept in the registry)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import WorkspaceOpt, console, sessions_for
from cli.models import ActorOpt, current_actor, fail

users_app = typer.Typer(no_args_is_help=True, help="Console users: viewer, approver, admin.")


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., help="User name (shown as the actor in the audit log)."),
    role: str = typer.Option(..., "--role", help="viewer (reads), approver or admin (also sign off candidates)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input (scripts)."),
    actor: Optional[str] = ActorOpt,
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Add a user (or restore a removed one); the password is asked for, and stored as an argon2 hash."""
    from console.auth import hash_password
    from registry.errors import RegistryError
    from registry.users import add_user

    password = sys.stdin.readline().rstrip("\n") if password_stdin else typer.prompt(
        f"password for {name}", hide_input=True, confirmation_prompt=True)
    try:
        hashed = hash_password(password)
        with sessions_for(workspace)() as session:
            add_user(session, name, role, hashed, actor=current_actor(actor))
            session.commit()
    except (RegistryError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(f"added {escape(name)} ({role})")


@users_app.command("list")
def users_list(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """The users, with their roles."""
    from registry.users import list_users

    with sessions_for(workspace)() as session:
        rows = [{"name": u.name, "role": u.role, "created_at": u.created_at.isoformat(timespec="seconds")} for u in list_users(session)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="console users")
    for column in ("name", "role", "created (UTC)"):
        table.add_column(column)
    for r in rows:
        table.add_row(escape(r["name"]), r["role"], r["created_at"])
    console.print(table)


@users_app.command("remove")
def users_remove(
    name: str = typer.Argument(...),
    actor: Optional[str] = ActorOpt,
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Remove a user: they can no longer sign in and their sessions end (the audit log keeps their name)."""
    from registry.errors import RegistryError
    from registry.users import remove_user

    try:
        with sessions_for(workspace)() as session:
            remove_user(session, name, actor=current_actor(actor))
            session.commit()
    except RegistryError as exc:
        raise fail(str(exc)) from None
    console.print(f"removed {escape(name)}")
