"""`medgate serve`: the production Bento behind a small reverse proxy that switches versions without
dropping requests.

Runs on the host, outside any Bento. The proxy listens on the public address; each Bento runs as
`bentoml serve` on a free loopback port (a backend). A reload asks `resolve()` for the Bento that
should be served; when it differs from the one being served, the supervisor
1. starts the new Bento on a fresh port and waits for its `/readyz`,
2. sends every new request to it,
3. lets the old backend finish the requests it was given (at most `drain_s`), then stops it.
A new Bento that fails to become ready is stopped and the old one keeps serving; the failure is
logged, and polls do not retry that tag (a SIGHUP does). A backend that exits by itself is started
again at the next poll, whatever happened before: when the registry names a tag that failed, the
last Bento that served is started again.

Reloads happen on SIGHUP and every `poll_s` seconds (0: on SIGHUP only). Requests and answers pass
through unchanged (the API key too) with one header added to answers: `X-Medgate-Bento`, the Bento
that answered. 502 when no backend answers; 403 for a request to a name that is not this server's,
or from another site's web page (`allowed_hosts`, `services.origin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp
from aiohttp import web

from services.origin import ALLOWED_HOSTS_ENV, refusal
from services.processes import find_free_port, serve_in_background, wait_until_ready
from services.settings import MODEL_SHA256_ENV

logger = logging.getLogger("medgate.serve")
BENTO_HEADER = "X-Medgate-Bento"
# Per-connection headers (RFC 9110 section 7.6.1) are not forwarded; the length is recomputed.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """What to serve: a Bento tag and, where the registry records it, its model.pt's sha256, which
    the backend checks before it serves (`services.settings.MODEL_SHA256_ENV`)."""

    bento_tag: str
    model_sha256: str | None = None


@dataclass
class Backend:
    """One `bentoml serve` of one Bento on a loopback port, and the requests it is answering."""

    target: Target
    port: int
    proc: subprocess.Popen[bytes]
    stop: Callable[[], None]
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bento_tag(self) -> str:
        return self.target.bento_tag


class Supervisor:
    """Serves the Bento named by `resolve()` on host:port and moves to a new one on `reload()`.

    Args:
        resolve: returns the exact Bento tag (or the `Target`) that should be served now (called in a
            worker thread).
        host, port: the public address of the proxy.
        poll_s: seconds between calls of `resolve()`; 0 disables polling.
        ready_timeout_s: how long a new Bento may take to answer `/readyz`.
        drain_s: how long an old backend may take to finish its requests before it is stopped.
        request_timeout_s: the longest a request may take end to end (the service's own limit is 60 s).
        backend_log: where the backends' output goes (default: this process's stdout).
        allowed_hosts: when given, a request whose `Host` is not one of these names, or that a
            browser sends from another site, is refused with 403 (`services.origin`).
    """

    def __init__(
        self,
        resolve: Callable[[], str | Target],
        host: str,
        port: int,
        *,
        poll_s: float = 10.0,
        ready_timeout_s: float = 180.0,
        drain_s: float = 90.0,
        request_timeout_s: float = 75.0,
        backend_log: IO[bytes] | None = None,
        allowed_hosts: frozenset[str] | None = None,
    ):
        self.resolve = resolve
        self.host, self.port = host, port
        self.poll_s = poll_s
        self.ready_timeout_s = ready_timeout_s
        self.drain_s = drain_s
        self.request_timeout_s = request_timeout_s
        self.backend_log = backend_log
        self.allowed_hosts = allowed_hosts
        self.current: Backend | None = None
        self._failed_tag: str | None = None
        self._reload_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def failed_tag(self) -> str | None:
        """The Bento tag whose start failed last (polls do not retry it), or None."""
        return self._failed_tag

    async def start(self) -> None:
        """Start the first backend (RuntimeError if it does not become ready), then the proxy."""
        target = await self._resolve()
        tag = target.bento_tag
        backend = await self._start_backend(target)
        if backend is None:
            raise RuntimeError(f"Bento {tag} did not become ready on 127.0.0.1; see its output above")
        self.current = backend
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0),
        )
        # Bodies are streamed to the Bento, which enforces the upload limit.
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        if self.poll_s > 0:
            self._poller = asyncio.create_task(self._poll())
        logger.info("serving %s on http://%s:%d (backend port %d)", tag, self.host, self.port, backend.port)

    async def reload(self, force: bool = False) -> bool:
        """Serve what `resolve()` names now; True when a switch (or a restart) happened.

        A tag whose start failed before is not retried by polls (`force` retries it); but a backend
        that has exited is started again whatever happened before: the named tag if it may be tried,
        else (or if it fails again) the last Bento that served.
        """
        async with self._reload_lock:
            target = await self._resolve()
            tag = target.bento_tag
            old = self.current
            alive = old is not None and old.proc.poll() is None
            if alive and old is not None and target == old.target:
                return False
            candidates = [target] if force or tag != self._failed_tag else []
            if not alive and old is not None and old.target not in candidates:
                candidates.append(old.target)  # the failed tag stays failed; the last good one returns
            new = None
            for candidate in candidates:
                logger.info("reload: starting %s", candidate.bento_tag)
                new = await self._start_backend(candidate)
                if new is not None:
                    break
                if candidate == target:
                    self._failed_tag = tag
                    logger.error("reload: %s did not become ready; still serving %s", tag, old and old.bento_tag)
            if new is None:
                return False
            if new.target == target:
                self._failed_tag = None
            self.current = new
            logger.info("reload: now serving %s on backend port %d", new.bento_tag, new.port)
        if old is not None:
            await self._retire(old)
        return True

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish (at most `drain_s`), stop the backends.

        A reload under way is let finish first, so that the Bento it starts is stopped too.
        """
        if self._poller is not None:
            self._poller.cancel()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the listening socket, then waits for open requests
        async with self._reload_lock:
            if self.current is not None:
                await self._retire(self.current)
                self.current = None
        if self._session is not None:
            await self._session.close()

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        if self.allowed_hosts is not None and (why := refusal(request.headers, self.allowed_hosts)):
            logger.warning("refused %s %s: %s", request.method, request.path, why)
            return web.json_response({"error": f"refused: {why}"}, status=403)
        backend = self.current
        if backend is None:
            return web.json_response({"error": "no model server is running"}, status=502)
        backend.in_flight += 1
        backend.idle.clear()
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
            if request.remote:
                forwarded = request.headers.get("X-Forwarded-For")
                headers["X-Forwarded-For"] = f"{forwarded}, {request.remote}" if forwarded else request.remote
            assert self._session is not None
            async with self._session.request(
                request.method,
                backend.url + request.rel_url.raw_path_qs,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            ) as upstream:
                body = await upstream.read()
                answer = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                answer[BENTO_HEADER] = backend.bento_tag
                return web.Response(status=upstream.status, headers=answer, body=body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            logger.warning("backend %s did not answer %s %s: %s", backend.bento_tag, request.method, request.path, exc)
            return web.json_response(
                {"error": f"the model server did not answer ({type(exc).__name__})"}, status=502
            )
        finally:
            backend.in_flight -= 1
            if backend.in_flight == 0:
                backend.idle.set()

    async def _resolve(self) -> Target:
        named = await asyncio.to_thread(self.resolve)
        return named if isinstance(named, Target) else Target(named)

    async def _start_backend(self, target: Target) -> Backend | None:
        tag, port = target.bento_tag, find_free_port()
        stack = contextlib.ExitStack()
        env = {MODEL_SHA256_ENV: target.model_sha256}
        if self.allowed_hosts is not None:
            env[ALLOWED_HOSTS_ENV] = ",".join(sorted(self.allowed_hosts))
        proc = stack.enter_context(serve_in_background(tag, port, log=self.backend_log, env=env))
        problem = await asyncio.to_thread(
            wait_until_ready, f"http://127.0.0.1:{port}", proc, self.ready_timeout_s
        )
        if problem is not None:
            logger.error("Bento %s on port %d: %s", tag, port, problem)
            await asyncio.to_thread(stack.close)
            return None
        backend = Backend(target, port, proc, stack.close)
        backend.idle.set()
        return backend

    async def _retire(self, backend: Backend) -> None:
        if backend.in_flight:
            logger.info("draining %s: %d request(s) in flight", backend.bento_tag, backend.in_flight)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(backend.idle.wait(), self.drain_s)
        await asyncio.to_thread(backend.stop)
        logger.info("stopped %s (backend port %d)", backend.bento_tag, backend.port)

    async def checked_reload(self, force: bool = False) -> None:
        """`reload`, logging instead of raising: a failed check (the registry unreachable) must not stop serving."""
        try:
            if self.current is not None and self.current.proc.poll() is not None:
                logger.error(
                    "backend %s exited (status %s); starting it again",
                    self.current.bento_tag,
                    self.current.proc.returncode,
                )
            await self.reload(force)
        except Exception:
            logger.exception("reload check failed; still serving %s", self.current and self.current.bento_tag)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self.checked_reload()


def run_supervisor(resolve: Callable[[], str | Target], host: str, port: int, **options: Any) -> int:
    """Serve until SIGINT or SIGTERM, reloading on SIGHUP; the exit status (0, or 1 if start failed)."""

    async def main() -> int:
        supervisor = Supervisor(resolve, host, port, **options)
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        reloads: set[asyncio.Task[None]] = set()

        def on_hangup() -> None:
            task = loop.create_task(supervisor.checked_reload(force=True))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        try:
            await supervisor.start()
        except (RuntimeError, OSError) as exc:  # the Bento did not start, or the port is taken
            logger.error("%s", exc)
            await supervisor.close()
            return 1
        await stopping.wait()
        logger.info("stopping")
        await supervisor.close()
        return 0

    return asyncio.run(main())


@contextlib.contextmanager
def run_in_thread(resolve: Callable[[], str | Target], port: int, host: str = "127.0.0.1", **options: Any) -> Iterator[SupervisorHandle]:
    """A supervisor on its own event loop in a background thread (tests, benchmarks); closed on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="medgate-serve", daemon=True)
    thread.start()
    supervisor = asyncio.run_coroutine_threadsafe(_create(resolve, host, port, options), loop).result()
    handle = SupervisorHandle(supervisor, loop, thread.native_id or 0)
    try:
        asyncio.run_coroutine_threadsafe(supervisor.start(), loop).result()
        yield handle
    finally:
        asyncio.run_coroutine_threadsafe(supervisor.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@dataclass(frozen=True)
class SupervisorHandle:
    """Controls a supervisor running in another thread."""

    supervisor: Supervisor
    loop: asyncio.AbstractEventLoop
    thread_id: int  # the native id of the thread running the proxy (for CPU accounting)

    def reload(self, force: bool = False) -> bool:
        return asyncio.run_coroutine_threadsafe(self.supervisor.reload(force), self.loop).result()

    @property
    def backend(self) -> Backend | None:
        return self.supervisor.current


async def _create(resolve: Callable[[], str | Target], host: str, port: int, options: dict[str, Any]) -> Supervisor:
    # Built on the supervisor's own loop: its lock and events belong to that loop.
    return Supervisor(resolve, host, port, **options)
