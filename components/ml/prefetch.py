"""Batches made ahead of the training step, on a background thread.

PyTorch releases the GIL inside its operations, so indexing and augmenting the next batches on a
thread overlaps with the network's step in the main thread. One worker thread, fed in order, keeps
the random generators of `make` consumed in the same order as a loop without prefetching: the same
seed gives the same batches either way.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Batch = TypeVar("Batch")


def worth_a_thread(depth: int, step_threads: int, on_gpu: bool) -> int:
    """The depth to prefetch at: `depth` where the step leaves a core to the worker thread (a GPU step, or
    fewer intra-op threads than this process's cores), else 0. Beside an OpenMP team that keeps every core
    busy, each time slice the worker takes stalls the whole team at its next barrier: on 2 cores at 64^3,
    training with 2 threads ran at 0.76 of a bare loop with the worker and 0.82 with the batches made in
    the step's thread (benchmarks/throughput.py); with 1 thread the worker is what keeps it at 0.91."""
    return depth if on_gpu or step_threads < len(os.sched_getaffinity(0)) else 0


def _single_threaded(make: Callable[[Item], Batch]) -> Callable[[Item], Batch]:
    """`make` with one intra-op thread on the worker, beside the step's own: a second team of OpenMP
    threads would only add switching. The count is per OpenMP thread, so the caller's stays; the
    default that threads started later take is restored by `prefetched`."""

    def run(item: Item) -> Batch:
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        return make(item)

    return run


def prefetched(make: Callable[[Item], Batch], items: Iterable[Item], depth: int) -> Iterator[tuple[Batch, float]]:
    """`make(item)` for each item in order, with the seconds the caller waited for it.

    Args:
        make: builds one batch; called on one background thread when `depth` > 0, in item order.
        items: what to build batches from.
        depth: batches built ahead of the one being consumed (0: built on demand, in this thread).

    Yields:
        (batch, waited): `waited` is the time between asking for the batch and getting it, which
        is all of `make`'s time without prefetching and near zero when the worker keeps ahead.
    """
    if depth <= 0:
        for item in items:
            started = time.monotonic()
            batch = make(item)
            yield batch, time.monotonic() - started
        return
    pending: deque[Future[Batch]] = deque()
    remaining = iter(items)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
    threads = torch.get_num_threads()
    try:
        work = _single_threaded(make)
        for item in remaining:
            pending.append(pool.submit(work, item))
            if len(pending) > depth:
                break
        while pending:  # during the caller's step with one batch, the next `depth` are being made
            started = time.monotonic()
            batch = pending.popleft().result()
            yield batch, time.monotonic() - started
            for item in remaining:
                pending.append(pool.submit(work, item))
                break
    finally:  # a caller that stops early (an exception in its step) leaves no work running
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
