"""The supervisor behind `medgate serve`, with real `bentoml serve` backends on 127.0.0.1: it heals."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from services.processes import find_free_port
from services.supervisor import BENTO_HEADER, run_in_thread
from tests.conftest import wait_gone
from tests.integration.bento_fixtures import descendants

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    pytest.fail(f"{what} after {timeout_s} s")


def test_a_dead_backend_restarts_at_the_next_poll_after_a_failed_switch(packaged, tmp_path):
    """A promoted Bento that cannot start is recorded as failed; then the serving backend dies: the next
    poll starts the last good Bento again (the failed tag stays failed), instead of 502 until SIGHUP."""
    good, bad = packaged["bento_tag"], "no-such-bento:v1"
    named = {"tag": good}
    port = find_free_port()
    with (
        open(tmp_path / "backends.log", "wb") as log,
        run_in_thread(lambda: named["tag"], port, poll_s=0.5, ready_timeout_s=180, backend_log=log) as handle,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as client,
    ):
        first = handle.backend
        assert first is not None and client.get("/readyz").headers[BENTO_HEADER] == good

        named["tag"] = bad
        _wait(lambda: handle.supervisor.failed_tag == bad, 120, f"{bad} not recorded as failed")
        assert handle.backend is first and client.get("/readyz").status_code == 200

        workers = descendants(first.proc.pid)
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
        # Its workers end with it (services.lifetime), instead of holding the model and the old port.
        wait_gone(workers, "the killed server's workers", timeout_s=60)
        _wait(lambda: handle.backend is not first, 240, "the dead backend was not restarted")
        resp = client.get("/readyz")
        assert resp.status_code == 200 and resp.headers[BENTO_HEADER] == good
        assert handle.backend.bento_tag == good and handle.backend.proc.poll() is None
        assert handle.supervisor.failed_tag == bad  # polls still do not retry it


def test_a_model_whose_hash_is_not_the_registrys_is_not_served(packaged, tmp_path):
    """The registry's artifact_sha256 goes to the backend: a model store entry with other weights (its own
    recorded hash consistent with them) is refused, and the supervisor does not start. (BentoML restarts
    the failing worker, so the server never becomes ready: the wait ends at ready_timeout_s.)"""
    from services.supervisor import Target

    port = find_free_port()
    with open(tmp_path / "backends.log", "wb") as log, pytest.raises(RuntimeError, match="did not become ready"):
        with run_in_thread(lambda: Target(packaged["bento_tag"], "0" * 64), port, ready_timeout_s=90, backend_log=log):
            pass
    assert "the registry records sha256 000000000000" in (tmp_path / "backends.log").read_text()
