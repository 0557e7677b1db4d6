"""`medgate serve` and `medgate deploy`: the production Bento on this machine, or as a container image."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from cli.common import WorkspaceOpt, console, sessions_for
from flows.settings import get_settings

# Exit status of `medgate deploy --containerize` when no engine answers and the command was printed instead.
EXIT_NO_ENGINE = 3
ModelOpt = typer.Option(None, "--model", help="Model name (default: the most recently promoted).")


def production_bento(sessions: Callable[[], Any], model: str | None) -> tuple[str, str, str, str]:
    """(Bento tag, model name, "name vN", the registry's artifact_sha256 of its model.pt) of the
    production version of `model` (None: latest promoted).

    Raises:
        LookupError: no such production version, or it has no Bento.
    """
    from registry import repository as repo

    with sessions() as session:
        production = repo.get_champion(session, model) if model else repo.latest_production(session)
        if production is None or not production.bento_tag:
            named = f" named {model}" if model else ""
            raise LookupError(f"no production model{named} with a Bento; run `medgate run` first")
        return production.bento_tag, production.name, f"{production.name} v{production.version}", production.artifact_sha256


def serve(
    port: int | None = typer.Option(None, "--port", "-p", help="Port (default: params serve.port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; off loopback, MEDGATE_API_KEY must be set."),
    model: str | None = ModelOpt,
    poll: float | None = typer.Option(
        None, "--poll", help="Seconds between registry checks (default: params serve.reload_poll_s; 0: on SIGHUP only)."
    ),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Serve the production Bento, and move to a newly promoted or rolled-back one without dropping requests.

    The registry is checked every --poll seconds and on SIGHUP; the new Bento is started beside the
    old one and gets new requests once ready; the old one finishes its requests, then stops.
    """
    from components.config import load_params
    from services.origin import LOOPBACK_NAMES, allowed_hosts
    from services.settings import API_KEY_ENV
    from services.supervisor import Target, run_supervisor

    settings = get_settings(workspace)
    serve_cfg = load_params(settings.workspace / "params.yaml").serve
    sessions = sessions_for(workspace)
    try:
        bento_tag, name, label, _ = production_bento(sessions, model)
    except LookupError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if host not in LOOPBACK_NAMES and not os.environ.get(API_KEY_ENV):
        console.print(f"[red]error:[/] serving on {host} (beyond this machine) needs {API_KEY_ENV}: set it to a long random key")
        raise typer.Exit(2)
    port = port or serve_cfg.port
    poll_s = serve_cfg.reload_poll_s if poll is None else poll
    console.print(f"serving {label} (bento {bento_tag}) on http://{host}:{port}")
    checks = f"every {poll_s:g} s and on SIGHUP" if poll_s > 0 else "on SIGHUP"
    console.print(f"the registry's production {name} is checked {checks} (kill -HUP {os.getpid()})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # On loopback (or where names are configured) browsers' DNS-rebinding and cross-site requests are refused.
    names = allowed_hosts(host, serve_cfg.allowed_hosts) if host in LOOPBACK_NAMES or serve_cfg.allowed_hosts else None

    def target() -> Target:  # the backend refuses a model.pt whose hash is not the registry's
        bento, _, _, sha256 = production_bento(sessions, name)
        return Target(bento, sha256)

    raise typer.Exit(run_supervisor(target, host, port, poll_s=poll_s, allowed_hosts=names))


def deploy(
    containerize: bool = typer.Option(
        False, "--containerize", help="Build an OCI image of the production Bento (bentoml containerize)."
    ),
    image_tag: str | None = typer.Option(None, "--image-tag", "-t", help="Image name:tag (default: the Bento tag)."),
    backend: str = typer.Option("docker", "--backend", help="Container engine for bentoml containerize (docker, podman, ...)."),
    model: str | None = ModelOpt,
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Name the production Bento and its image; with --containerize, build the image where an engine runs.

    Without a container engine answering here, prints the exact command and the image tag it will
    produce, and exits with status 3. See the README's "Deploying" for Kubernetes.
    """
    from services.processes import container_engine_problem, containerize_bento, containerize_command

    try:
        bento_tag, _, label, _ = production_bento(sessions_for(workspace), model)
    except LookupError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    image = image_tag or bento_tag
    command = shlex.join(containerize_command(bento_tag, image, backend))
    console.print(f"production: {label}, bento {bento_tag}")
    console.print(f"image: {image}")
    if not containerize:
        console.print(f"build it with `medgate deploy --containerize`, which runs: {command}")
        return
    problem = container_engine_problem(backend)
    if problem is not None:
        console.print(f"[yellow]not built:[/] no container engine answers here ({problem}).")
        console.print("On a machine with one, where this Bento is in the BentoML store, run:")
        console.print(f"  {command}", markup=False, highlight=False)
        archive = f"{bento_tag.replace(':', '-')}.bento"
        console.print(f"to copy the Bento there: bentoml export {bento_tag} {archive}, then bentoml import {archive}")
        console.print(f"the image will be tagged {image}")
        raise typer.Exit(EXIT_NO_ENGINE)
    console.print(f"running: {command}")
    status = containerize_bento(bento_tag, image, backend)
    if status != 0:
        console.print(f"[red]error:[/] bentoml containerize exited with status {status}")
        raise typer.Exit(status)
    console.print(f"built image {image}")
