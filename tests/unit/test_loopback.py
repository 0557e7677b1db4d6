"""Loopback HTTP: health checks never go through HTTP(S)_PROXY; webhook errors never log the webhook's URL.

A real HTTP server on 127.0.0.1 (http.server in a thread) answers; the proxy named in the environment
is a port where nothing listens, so any request sent through it fails.
"""

from __future__ import annotations

import http.server
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

from flows.notify import WebhookFailed, notify_webhook_task
from flows.settings import configure_offline
from services.processes import find_free_port, wait_until_ready

SECRET = "T0KEN-s3cr3t-0123456789"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(200 if self.path == "/readyz" else 404)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(500)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def local_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead_proxy(monkeypatch) -> str:
    proxy = f"http://127.0.0.1:{find_free_port()}"
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(key, proxy)
    for key in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(key, raising=False)
    return proxy


def test_readiness_check_ignores_a_proxy_in_the_environment(local_server, dead_proxy):
    with pytest.raises(httpx.ConnectError):  # the environment's proxy is really dead: a default client fails
        httpx.get(f"{local_server}/readyz", timeout=2)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert wait_until_ready(local_server, proc, timeout_s=3) is None
    finally:
        proc.kill()
        proc.wait()


def test_offline_settings_keep_loopback_off_the_proxy_for_libraries(local_server, dead_proxy):
    """Prefect's and BentoML's own clients read the environment: loopback is added to NO_PROXY."""
    configure_offline()
    assert httpx.get(f"{local_server}/readyz", timeout=2).status_code == 200
    assert httpx.get(f"{local_server.replace('127.0.0.1', 'localhost')}/readyz", timeout=2).status_code == 200


def test_a_failing_webhook_is_logged_by_host_and_error_type_only(local_server, caplog):
    url = f"{local_server}/hooks/{SECRET}?token={SECRET}"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(WebhookFailed) as failed:
        notify_webhook_task.fn(url, {"status": "completed"})
    message = str(failed.value)
    assert message == f"webhook {local_server}/… failed: HTTPStatusError (HTTP 500)"
    logging.getLogger("medgate.test").warning("not sent: %s", failed.value)
    assert SECRET not in caplog.text and "HTTP Request: POST" in caplog.text  # httpx's own line, redacted
    dead = f"http://127.0.0.1:{find_free_port()}/hooks/{SECRET}"
    with pytest.raises(WebhookFailed, match="ConnectError") as refused:
        notify_webhook_task.fn(dead, {"status": "completed"})
    assert SECRET not in str(refused.value) and SECRET not in caplog.text
