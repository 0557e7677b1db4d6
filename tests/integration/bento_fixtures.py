"""Session fixtures shared by the HTTP tests: a tiny model built into a real Bento, and `medgate serve`
serving it from a real SQLite registry on 127.0.0.1 with an API key, started once per session.

Imported into tests/integration/conftest.py. The BentoML store is the session's temporary one
(tests/conftest.py); the server is stopped with SIGTERM at the end, and must stop its Bentos itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from components.config import default_params
from components.documents.modelcard import HTML_FILE, MARKDOWN_FILE
from components.stages.package import build_bento, save_to_model_store
from services.processes import find_free_port
from services.settings import API_KEY_ENV, settings_for_model
from tests.conftest import PROJECT, running
from tests.tiny_model import save_tiny_model

CLASS_NAMES = ("benign", "malignant")
MODEL_NAME = "tiny-http"
API_KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
UPLOAD_LIMIT = 200_000
CARD_HTML = "<!doctype html><html><body><h1>tiny-http model card</h1></body></html>"
CARD_MARKDOWN = "# tiny-http model card\n"


def stored_image(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((24, 24)) * 255).astype(np.uint8)


def package_tiny_model(root: Path, seed: int, *, with_card: bool) -> dict[str, str]:
    """A tiny untrained model in the store and a Bento pinned to it: {"model_tag", "bento_tag", "sha256"}."""
    save_tiny_model(root, CLASS_NAMES, seed)
    files = {HTML_FILE: CARD_HTML, MARKDOWN_FILE: CARD_MARKDOWN} if with_card else None
    model_tag, sha256 = save_to_model_store(
        root, MODEL_NAME, {"dataset_version": "ds-http", "operating_threshold": 0.4}, files=files
    )
    params = default_params(
        package={"model_name": f"{MODEL_NAME}-bento", "max_batch_size": 16, "max_latency_ms": 500},
        serve={"max_upload_bytes": UPLOAD_LIMIT},
    )
    settings = settings_for_model(model_tag, params.package, params.serve)
    bento_tag = build_bento(settings.to_dict(), {"dataset_version": "ds-http"}, name=params.package.model_name)
    return {"model_tag": model_tag, "bento_tag": bento_tag, "sha256": sha256}


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory, bentoml_home: Path) -> dict[str, Any]:
    """Model and Bento "A" (with a model card), with the build's wall time."""
    started = time.perf_counter()
    built = package_tiny_model(tmp_path_factory.mktemp("model-a"), seed=0, with_card=True)
    return {**built, "build_s": time.perf_counter() - started}


@pytest.fixture(scope="session")
def served(packaged: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`medgate serve --poll 0` of the registry's production Bento (A), MEDGATE_API_KEY set.

    Yields a dict: `client` (httpx, sends the key), `base_url`, `proc`, `sessions` (the registry),
    `register(model_tag, bento_tag, sha256)` → version id, `log` (the server's output so far).
    """
    from registry import repository as repo
    from registry.db import make_session_factory, upgrade_database

    ws = tmp_path_factory.mktemp("serve-workspace")
    shutil.copy(PROJECT / "params.yaml", ws / "params.yaml")
    url = f"sqlite:///{ws / 'registry.db'}"
    upgrade_database(url)
    sessions = make_session_factory(url)

    def register(model_tag: str, bento_tag: str, sha256: str) -> int:
        with sessions() as s:
            run = repo.start_run(
                s, dataset_id=None, params={}, git_commit=None, prefect_flow_run_id=None, trigger="test"
            )
            mv = repo.register_model_version(
                s, name=MODEL_NAME, run_id=run.id, dataset_version="ds-http", test_data_version="ds-http",
                metrics={}, artifact_sha256=sha256, model_tag=model_tag, bento_tag=bento_tag,
            )  # fmt: skip
            s.commit()
            return mv.id

    first = register(packaged["model_tag"], packaged["bento_tag"], packaged["sha256"])
    with sessions() as s:
        repo.promote_version(s, first, actor="test", reason="first", expected_champion_id=repo.ANY_CHAMPION)

    port = find_free_port()
    base = f"http://127.0.0.1:{port}"
    tmpdir = ws / "tmp"  # the server's own temporary directory, for tests to look into
    tmpdir.mkdir()
    env = {**os.environ, "MEDGATE_DATABASE_URL": url, API_KEY_ENV: API_KEY, "COLUMNS": "200", "TMPDIR": str(tmpdir)}
    log_path = ws / "serve.log"
    medgate = Path(sys.executable).with_name("medgate")
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(medgate), "serve", "--port", str(port), "--poll", "0", "--workspace", str(ws)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def read_log() -> str:
        return log_path.read_text(errors="replace")

    try:
        _wait_ready(base, proc, read_log)
        with httpx.Client(base_url=base, timeout=60, headers=AUTH) as client:
            yield {
                "client": client, "base_url": base, "proc": proc, "sessions": sessions, "register": register,
                "log": read_log, "ready_s": time.perf_counter() - started, "workspace": ws, "tmpdir": tmpdir,
                **packaged,
            }  # fmt: skip
    finally:
        _stop_supervisor(proc, read_log)


def _wait_ready(base: str, proc: subprocess.Popen[bytes], read_log: Callable[[], str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"medgate serve exited with {proc.returncode}:\n{read_log()[-4000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"medgate serve not ready after {timeout_s} s:\n{read_log()[-4000:]}")


def descendants(pid: int) -> set[int]:
    """Process ids below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _stop_supervisor(proc: subprocess.Popen[bytes], read_log: Callable[[], str]) -> None:
    """SIGTERM, as an operator would; the supervisor must exit 0 and leave no Bento behind."""
    below = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        status = None
    left = {pid for pid in below if running(pid)}
    for pid in left | ({proc.pid} if status is None else set()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert status == 0 and not left, f"medgate serve exit {status}, processes left {left}:\n{read_log()[-3000:]}"
