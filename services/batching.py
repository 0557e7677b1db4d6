"""Adaptive batching of the model call inside one server process.

`MicroBatcher` lets concurrent requests share forward passes without leaving the process: a request
waits while the network is busy, and whatever queued meanwhile runs next as one batch (up to
`max_batch_size` images). A batch with fewer rows queued than the last one had also waits briefly for
the rest (the last batch's clients, coming back): at most one batch's time and `GATHER_S`. At low load
each request runs alone and at once, so batching adds no latency; under load the batches grow with the
queue. A batch expected to be short (`inline_s`) runs on the event loop; a longer one runs in a worker
thread, so that the event loop keeps reading and preprocessing requests while it computes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

import anyio
import numpy as np


# Longest a batch waits for the clients of the last one to come back (and never over one batch's time).
GATHER_S = 0.02


class Overloaded(RuntimeError):
    """The queue is longer than the latency budget allows: the request is refused, not queued."""


class MicroBatcher:
    """Batches calls of `fn` (rows in, rows out along axis 0) from concurrent coroutines of one event loop.

    Args:
        fn: the batched computation, e.g. the network: (N, ...) -> (N, ...); called in a worker thread.
        max_batch_size: most rows per call of `fn`.
        max_latency_ms: a request whose expected wait (queued batches times the recent batch time) is
            over this is refused with `Overloaded` instead of queued.
        observe: called with each batch's size (the service's metric of it).
        inline_s: a batch expected (from the calls so far) to take at most this long runs on the event loop
            itself, not in a worker thread; 0: every batch runs in a thread. Where no CPU is free to run the
            event loop beside the computation (a CPU server whose CPUs its workers' forward passes already
            share), the thread buys no overlap, only its costs: handing the batch over and back, and the GIL
            passed between the two threads at every layer (see ServingSettings.inline_forward_s).
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_latency_ms: float,
                 observe: Callable[[int], None] | None = None, inline_s: float = 0.0):
        self._fn = fn
        self._inline_s = inline_s
        self._observe = observe
        self._max_batch_size = max_batch_size
        self._budget_s = max_latency_ms / 1000
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._queued_rows = 0
        self._batch_s = 0.0  # moving average of one call's duration
        self._row_s = 0.0  # moving average of one call's duration per row (0: no call yet)
        self._waiter: asyncio.Future[None] | None = None  # woken by each request queued while a batch gathers
        self._worker: asyncio.Task[None] | None = None
        # Recent batch sizes (the last: the demand a busy server expects back), for tests and metrics.
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self.gathers = 0  # batches that waited for the last one's clients

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        expected_wait = self._batch_s * math.ceil((self._queued_rows + len(rows)) / self._max_batch_size)
        if self._queue and expected_wait > self._budget_s:
            raise Overloaded(
                f"server busy: about {expected_wait * 1000:.0f} ms of queued work, over the "
                f"{self._budget_s * 1000:.0f} ms budget; retry later"
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, future))
        self._queued_rows += len(rows)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._gather()
                taken = [self._queue.popleft()]
                size = len(taken[0][0])
                while self._queue and size + len(self._queue[0][0]) <= self._max_batch_size:
                    taken.append(self._queue.popleft())
                    size += len(taken[-1][0])
                self._queued_rows -= size
                await self._run([rows for rows, _ in taken], [future for _, future in taken])
        finally:
            self._worker = None

    async def _gather(self) -> None:
        """Waits while fewer rows are queued than the last batch had, at most GATHER_S and one batch's time.

        Under closed-loop load (each client sends its next request when answered) the clients of the batch
        just answered come back within milliseconds. Leaving without them split one group of clients into
        groups that then alternated for good: 16 clients a worker were served in batches of 2, 6, 10 and 15
        (benchmarks/serving.py, ResNet-18 w64; mean 8), paying small batches' cost per image. At low load
        the last batch had one row and the queue holds one: nothing waits.
        """
        expected = min(self.batch_sizes[-1] if self.batch_sizes else 0, self._max_batch_size)
        if self._queued_rows >= expected:
            return
        self.gathers += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(GATHER_S, self._batch_s)
        while self._queued_rows < expected and (left := deadline - loop.time()) > 0:
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(left, lambda w=waiter: w.done() or w.set_result(None))
            try:
                await waiter
            finally:
                timer.cancel()
        self._waiter = None

    async def _run(self, parts: list[np.ndarray], futures: list[asyncio.Future[np.ndarray]]) -> None:
        batch = np.concatenate(parts)
        # Per-row time over-estimates a larger batch than those measured (its rows cost less), so a batch
        # runs inline only once calls have shown it short; the first call runs in a thread.
        inline = 0 < len(batch) * self._row_s <= self._inline_s
        started = time.perf_counter()
        try:
            out = self._fn(batch) if inline else await anyio.to_thread.run_sync(self._fn, batch)
        except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self._batch_s = elapsed if self._batch_s == 0 else 0.8 * self._batch_s + 0.2 * elapsed
        row_s = elapsed / len(batch)
        self._row_s = row_s if self._row_s == 0 else 0.8 * self._row_s + 0.2 * row_s
        self.batch_sizes.append(len(batch))
        if self._observe is not None:
            self._observe(len(batch))
        start = 0
        for rows, future in zip(parts, futures):
            if not future.done():  # a caller that went away (client disconnected) has cancelled its future
                future.set_result(out[start : start + len(rows)])
            start += len(rows)
        if inline:  # let the event loop answer these callers (and read new requests) before the next batch
            await asyncio.sleep(0)
