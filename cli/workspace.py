"""`medgate init [DIR]`: a new workspace, the folder a run's data, models and reports live in."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console


def init(folder: Path = typer.Argument(Path("."), help="The workspace folder (created if needed; existing data is kept).")) -> None:
    """Make FOLDER a medgate workspace: medgate's default params.yaml, dvc.yaml and DVC config.

    Run `medgate run --workspace FOLDER` (or set MEDGATE_WORKSPACE) next; edit its params.yaml first
    to change a setting. A folder that already holds a params.yaml keeps it.
    """
    from flows.workspace import create_workspace

    existing = (folder / "params.yaml").is_file()
    kept = (folder / "params.yaml").read_text() if existing else None
    create_workspace(folder)
    if kept is not None:
        (folder / "params.yaml").write_text(kept)
    console.print(f"workspace {folder.resolve()}: {'params.yaml kept' if existing else 'default params.yaml'}; "
                  f"next: medgate run --workspace {folder}", highlight=False, soft_wrap=True)


def require_workspace(workspace: Path) -> None:
    """Exit 2 naming `medgate init` when `workspace` is not a workspace (no params.yaml)."""
    if not (workspace / "params.yaml").is_file():
        console.print(f"[red]error:[/] {workspace} is not a medgate workspace (no params.yaml): "
                      f"`medgate init {workspace}` makes one", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
