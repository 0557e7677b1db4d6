"""Server processes: `bentoml serve` of a Bento on a port, readiness, free ports, and container images.

Every `bentoml` subprocess gets the environment of `components.stages.package.bentoml_env` (no
telemetry, this process's BentoML store, no PYTHONPATH that would shadow the Bento's own code).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from components.stages.package import bentoml_env, output_tail


def serve_command(bento_tag: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command that serves a Bento, bound to `host` (loopback by default)."""
    return [sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", host, "--port", str(port)]


@contextlib.contextmanager
def serve_in_background(
    bento_tag: str,
    port: int,
    host: str = "127.0.0.1",
    log: Any = None,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """`bentoml serve` in its own process group, stopped (SIGTERM, then SIGKILL) when the block ends.

    `bento_tag` may also be a service import path ("module:Class") found from `cwd`.
    `log`: a binary file for the server's output (default: this process's stdout/stderr).
    `env`: environment changes for the server; None removes a variable.
    """
    child_env = bentoml_env()
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    proc = subprocess.Popen(
        serve_command(bento_tag, port, host),
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
        cwd=cwd,
    )
    try:
        yield proc
    finally:
        stop_process_group(proc)


def wait_until_ready(base_url: str, proc: subprocess.Popen[Any], timeout_s: float) -> str | None:
    """None once `{base_url}/readyz` answers 200; else why not (the server exited, or timed out)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"server exited with status {proc.returncode}"
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2.0, trust_env=False).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return f"not ready after {timeout_s:.0f} s"


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def containerize_command(bento_tag: str, image_tag: str, backend: str = "docker") -> list[str]:
    """`bentoml containerize` of `bento_tag` into the image `image_tag`, as an operator would type it."""
    return ["bentoml", "containerize", bento_tag, "--backend", backend, "--image-tag", image_tag]


def container_engine_problem(backend: str = "docker", timeout_s: float = 15.0) -> str | None:
    """None when the container engine answers (`<backend> info`), else why not."""
    executable = shutil.which(backend)
    if executable is None:
        return f"{backend} is not installed (not on PATH)"
    try:
        proc = subprocess.run(
            [executable, "info"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return f"`{backend} info` did not answer within {timeout_s:.0f} s"
    if proc.returncode != 0:
        return f"`{backend} info` failed: {output_tail(proc.stderr or proc.stdout, 3)}"
    return None


def containerize_bento(bento_tag: str, image_tag: str, backend: str = "docker") -> int:
    """Run `containerize_command` with this process's BentoML store; its output goes to the terminal."""
    command = [sys.executable, "-m", *containerize_command(bento_tag, image_tag, backend)]
    return subprocess.run(command, env=bentoml_env(), stdin=subprocess.DEVNULL, check=False).returncode


def stop_process_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to `proc`'s process group (started with `start_new_session`), SIGKILL after 20 s."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
