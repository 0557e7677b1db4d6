"""Connections shared evenly between the worker processes of one server.

The workers of `bentoml serve` accept from one listening socket, and asyncio accepts every pending
connection at each wake-up. Clients that open their keep-alive connections in a burst (a load balancer's
pool, `medgate serve`'s proxy, a benchmark) were then often all held by whichever worker woke first, while
the other CPU sat idle: of 10 bursts of 32 connections to 2 workers (benchmarks/serving.py's stand-in,
machine under load), 5 split 1/31, 3/29 or 6/26.

So each worker publishes how many connections it holds, in a file of the folder its siblings share
(services.readiness), and takes a pending connection only while it holds no more than the sibling that
holds fewest; otherwise it stops watching the socket for `RETRY_S`, so that the sibling takes it. A sibling
that has not taken it within `PATIENCE_S` (stuck, or dead) leaves it to this worker: a connection never
waits longer than that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from pathlib import Path
from typing import Any

RETRY_S = 0.002
PATIENCE_S = 0.05
_COUNT = struct.Struct("<q")
logger = logging.getLogger("medgate.service")


class ConnectionShare:
    """This worker's count of open connections, published in `folder`, and whether to take one more."""

    def __init__(self, folder: Path, worker: int | str, patience_s: float = PATIENCE_S):
        folder.mkdir(mode=0o700, exist_ok=True)
        self.folder = folder
        self.name = f"connections-{worker}"
        self.patience_s = patience_s
        self.count = 0
        self._waiting_since: float | None = None
        self._fd = os.open(folder / self.name, os.O_RDWR | os.O_CREAT, 0o600)
        self._publish()

    def opened(self) -> None:
        self.count += 1
        self._publish()

    def closed(self) -> None:
        self.count -= 1
        self._publish()

    def fewest_elsewhere(self) -> int | None:
        """The fewest connections a sibling holds (None without siblings)."""
        counts = []
        for path in self.folder.glob("connections-*"):
            if path.name != self.name:
                try:
                    counts.append(_COUNT.unpack(path.read_bytes()[: _COUNT.size])[0])
                except (OSError, struct.error):  # a sibling starting: its file is being created
                    continue
        return min(counts, default=None)

    def should_take(self, now: float) -> bool:
        """Whether to accept a pending connection now: this worker holds no more than the least busy
        sibling, or the siblings have left it pending for `patience_s`."""
        fewest = self.fewest_elsewhere()
        if fewest is None or self.count <= fewest:
            self._waiting_since = None
            return True
        if self._waiting_since is None:
            self._waiting_since = now
        if now - self._waiting_since >= self.patience_s:
            self._waiting_since = None
            return True
        return False

    def _publish(self) -> None:
        os.pwrite(self._fd, _COUNT.pack(self.count), 0)


def share_connections(share: ConnectionShare, loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Make the event loop's servers accept one connection per wake-up, and only when `share` says so;
    count each connection in `share` while it is open. Before the server starts listening (in the
    service's constructor, which BentoML calls in the application's start-up). False, with a warning,
    for a loop that is not asyncio's selector loop (whose accept step this wraps)."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # constructed outside a server (tests, scripts): nothing listens
            return False
    accept = getattr(loop, "_accept_connection", None)
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) or accept is None:
        logger.warning("connections are not shared evenly between workers on a %s", type(loop).__name__)
        return False

    def counted(protocol_factory: Any) -> Any:
        def make() -> Any:
            protocol = protocol_factory()
            made, lost = protocol.connection_made, protocol.connection_lost

            def connection_made(transport: Any) -> None:
                share.opened()
                made(transport)

            def connection_lost(exc: Exception | None) -> None:
                share.closed()
                lost(exc)

            protocol.connection_made, protocol.connection_lost = connection_made, connection_lost
            return protocol

        return make

    def balanced(protocol_factory: Any, sock: Any, sslcontext: Any = None, server: Any = None,
                 backlog: int = 100, *rest: Any) -> None:
        if share.should_take(time.monotonic()):
            accept(counted(protocol_factory), sock, sslcontext, server, 1, *rest)
            return
        fd = sock.fileno()
        loop._remove_reader(fd)  # type: ignore[attr-defined]

        def watch_again() -> None:
            if sock.fileno() == fd and (server is None or server.is_serving()):
                loop._add_reader(fd, balanced, protocol_factory, sock, sslcontext, server, backlog, *rest)  # type: ignore[attr-defined]

        loop.call_later(RETRY_S, watch_again)

    loop._accept_connection = balanced  # type: ignore[attr-defined]
    return True
