"""Adaptive batching of the model call inside one server process.

`MicroBatcher` lets concurrent requests share forward passes without leaving the process: a request
waits only while the network is busy, and whatever queued meanwhile runs next as one batch (up to
`max_batch_size` images). At low load each request runs alone and at once, so batching adds no
latency; under load the batches grow with the queue. The network runs in a worker thread, so the
event loop keeps reading and preprocessing requests while it computes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

import anyio
import numpy as np


class Overloaded(RuntimeError):
    """The queue is longer than the latency budget allows: the request is refused, not queued."""


class MicroBatcher:
    """Batches calls of `fn` (rows in, rows out along axis 0) from concurrent coroutines of one event loop.

    Args:
        fn: the batched computation, e.g. the network: (N, ...) -> (N, ...); called in a worker thread.
        max_batch_size: most rows per call of `fn`.
        max_latency_ms: a request whose expected wait (queued batches times the recent batch time) is
            over this is refused with `Overloaded` instead of queued.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_latency_ms: float):
        self._fn = fn
        self._max_batch_size = max_batch_size
        self._budget_s = max_latency_ms / 1000
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._queued_rows = 0
        self._batch_s = 0.0  # moving average of one call's duration
        self._worker: asyncio.Task[None] | None = None
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batch sizes, for tests and metrics

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
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken = [self._queue.popleft()]
                size = len(taken[0][0])
                while self._queue and size + len(self._queue[0][0]) <= self._max_batch_size:
                    taken.append(self._queue.popleft())
                    size += len(taken[-1][0])
                self._queued_rows -= size
                await self._run([rows for rows, _ in taken], [future for _, future in taken])
        finally:
            self._worker = None

    async def _run(self, parts: list[np.ndarray], futures: list[asyncio.Future[np.ndarray]]) -> None:
        started = time.perf_counter()
        try:
            out = await anyio.to_thread.run_sync(self._fn, np.concatenate(parts))
        except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self._batch_s = elapsed if self._batch_s == 0 else 0.8 * self._batch_s + 0.2 * elapsed
        self.batch_sizes.append(sum(len(p) for p in parts))
        start = 0
        for rows, future in zip(parts, futures):
            if not future.done():  # a caller that went away (client disconnected) has cancelled its future
                future.set_result(out[start : start + len(rows)])
            start += len(rows)
