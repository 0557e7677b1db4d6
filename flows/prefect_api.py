"""A private Prefect API for one `medgate run`, started before the flow's libraries are imported.

Without PREFECT_API_URL a Prefect flow starts an ephemeral API server itself (a uvicorn subprocess
with SQLite under PREFECT_HOME), but only once the flow is called, and only after importing the
whole Prefect server stack into the calling process to do so: 4-10 s of a run spent waiting. The
CLI starts the same server here, first, so that it boots while the CLI imports the pipeline; the
flow then runs against it as against any Prefect server. It stops when the process exits, after
Prefect has sent its last logs and events (Prefect drains those in threading's exit hooks, which
run before `atexit`'s). With PREFECT_API_URL set (a `medgate server` or another Prefect server)
nothing is started.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time

from flows.settings import configure_offline

# What Prefect's own ephemeral server (prefect.server.api.server.SubprocessASGIServer) runs with.
_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
STARTUP_TIMEOUT_S = 120.0  # a fresh database is migrated first (about 10 s here)


class PrivateApi:
    """A Prefect API server subprocess on a free loopback port, stopped at exit."""

    def __init__(self) -> None:
        from services.lifetime import die_with_parent
        from services.processes import find_free_port

        port = str(find_free_port())
        self.url = f"http://127.0.0.1:{port}/api"
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", port, "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **_SERVER_ENV}, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
        atexit.register(self.stop)

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Block until `/health` answers 200.

        Raises:
            RuntimeError: the server exited or did not answer within `timeout_s`.
        """
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError("the Prefect API server for this run exited before it answered (its errors are above)")
            try:
                if httpx.get(f"{self.url}/health", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the Prefect API server for this run did not answer {self.url}/health within {timeout_s:.0f} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_prefect_api() -> PrivateApi | None:
    """A `PrivateApi` started now and named by PREFECT_API_URL for this process and its children.

    None where PREFECT_API_URL already names a server, or where Prefect is already imported (its
    settings are read at import: the flow would not see the variable; Prefect then starts its own).
    """
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    configure_offline()  # the server sends telemetry unless told not to
    api = PrivateApi()
    os.environ["PREFECT_API_URL"] = api.url
    return api
