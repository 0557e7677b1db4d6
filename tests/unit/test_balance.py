"""services.balance: a server's workers share connections evenly, and a stuck sibling delays none."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.balance import ConnectionShare, share_connections


def test_a_worker_takes_a_connection_only_while_it_holds_no_more_than_the_least_busy_sibling(tmp_path):
    alone = ConnectionShare(tmp_path / "alone", 0)
    alone.opened()
    assert alone.should_take(0.0)
    a, b = ConnectionShare(tmp_path / "pair", 0), ConnectionShare(tmp_path / "pair", 1)
    a.opened()
    assert a.fewest_elsewhere() == 0 and b.fewest_elsewhere() == 1
    assert b.should_take(0.0) and not a.should_take(10.0)
    b.opened()
    assert a.should_take(10.001)  # even again
    a.opened()
    assert not a.should_take(20.0) and not a.should_take(20.0 + 0.9 * a.patience_s)
    assert a.should_take(20.0 + a.patience_s), "a sibling that leaves a connection pending gives it up"
    a.closed()
    a.closed()
    assert a.count == 0 and b.fewest_elsewhere() == 0


class _Echo(asyncio.Protocol):
    pass


@contextmanager
def _workers(listener: socket.socket, shares: list[ConnectionShare]) -> Iterator[list[asyncio.AbstractEventLoop]]:
    """One thread per share, each with its own event loop serving `listener` as a server worker would."""
    loops, threads, started = [], [], threading.Barrier(len(shares) + 1)
    for share in shares:
        loop = asyncio.new_event_loop()

        def run(loop: asyncio.AbstractEventLoop = loop, share: ConnectionShare = share) -> None:
            asyncio.set_event_loop(loop)
            assert share_connections(share, loop)
            server = loop.run_until_complete(loop.create_server(_Echo, sock=listener.dup()))
            started.wait()
            loop.run_forever()
            server.close()
            loop.run_until_complete(server.wait_closed())
            loop.close()

        loops.append(loop)
        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
    started.wait()
    try:
        yield loops
    finally:
        for loop in loops:
            loop.call_soon_threadsafe(loop.stop)
        for thread in threads:
            thread.join(5)


def _wait_for(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def _listener() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.setblocking(False)
    return listener


def test_a_burst_of_connections_is_shared_even_when_one_worker_is_busy_as_it_arrives(tmp_path):
    # Without the share, the free worker accepts the whole burst at its first wake-up.
    shares = [ConnectionShare(tmp_path, 0), ConnectionShare(tmp_path, 1)]
    with _listener() as listener, _workers(listener, shares) as loops:
        loops[1].call_soon_threadsafe(time.sleep, 0.03)  # worker 1 busy with a request
        clients = [socket.create_connection(listener.getsockname()) for _ in range(20)]
        try:
            assert _wait_for(lambda: sum(s.count for s in shares) == 20), [s.count for s in shares]
            assert min(s.count for s in shares) >= 8, [s.count for s in shares]
        finally:
            for client in clients:
                client.close()
        assert _wait_for(lambda: all(s.count == 0 for s in shares)), "closed connections are counted out"


def test_a_sibling_that_never_accepts_delays_a_connection_by_the_patience_only(tmp_path):
    ConnectionShare(tmp_path, "stuck")  # entered, then never accepts
    share = ConnectionShare(tmp_path, 0)
    with _listener() as listener, _workers(listener, [share]):
        started = time.monotonic()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            assert _wait_for(lambda: share.count == 3), share.count
            assert time.monotonic() - started < 3 * share.patience_s + 1.0
        finally:
            for client in clients:
                client.close()


def test_a_loop_it_cannot_wrap_is_left_as_it_is(tmp_path):
    class Other(asyncio.AbstractEventLoop):
        pass

    share = ConnectionShare(Path(tmp_path), 0)
    assert share_connections(share, Other()) is False
    assert share_connections(share) is False, "outside a running loop (a constructor in a test) nothing listens"
