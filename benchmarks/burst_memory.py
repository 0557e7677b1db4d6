"""Resident memory of a running server while it answers a burst of uploads that declare huge images.

`benchmarks/serving.py` runs this against the Bento it serves (`--burst-rounds`, `--burst-only`).
The uploads are issue 15's forged files (`tests.images.FORGED`): a 664-byte RLE DICOM declaring
20000x20000 16-bit pixels, a 79 KB PNG of 9000x9000, a 62 KB .nii.gz of 8000x8000 and a 128-byte .npy
whose header declares 10^6x10^6 float64. The server's memory is the resident set of its process and
every process below it, summed, sampled every few milliseconds; idle is the largest sum over a second
before the burst. Also reported: the sum over its processes of the growth of their own peak resident
set (VmHWM), which no sampling misses.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MB = 2**20
TARGET_GROWTH_MB = 300.0


@dataclass
class BurstResult:
    concurrency: int
    requests: int
    seconds: float
    idle_mb: float  # summed resident set of the server's processes, at rest
    peak_mb: float  # the largest sum sampled during the burst
    hwm_growth_mb: float  # sum over processes of the growth of their peak resident set (VmHWM)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.idle_mb


def tree_pids(pid: int) -> set[int]:
    """`pid` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree_kb(pids: set[int], key: str) -> dict[int, int]:
    return {p: _status_kb(p, key) for p in pids}


class _Sampler(threading.Thread):
    """Samples the summed resident set of `pids` until stopped; `peak` is the largest sum seen."""

    def __init__(self, pids: set[int], interval_s: float = 0.005):
        super().__init__(daemon=True)
        self.pids, self.interval_s, self.peak = pids, interval_s, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, sum(_tree_kb(self.pids, "VmRSS").values()))
            time.sleep(self.interval_s)


def measure_burst(base_url: str, pid: int, uploads: dict[str, bytes], *, concurrency: int = 16, rounds: int = 8,
                  headers: dict[str, str] | None = None) -> BurstResult:
    """Send every upload `rounds` times to `/predict`, `concurrency` at once, watching the server's memory."""
    pids = tree_pids(pid)
    idle = _Sampler(pids)
    idle.start()
    time.sleep(1.0)
    idle.done.set()
    idle.join()
    hwm_before = _tree_kb(pids, "VmHWM")
    sampler = _Sampler(pids)
    sampler.start()
    started = time.perf_counter()
    statuses = asyncio.run(_send(base_url, [(n, d) for _ in range(rounds) for n, d in uploads.items()],
                                 concurrency, headers or {}))
    seconds = time.perf_counter() - started
    time.sleep(0.3)  # memory freed late still counts
    sampler.done.set()
    sampler.join()
    hwm_after = _tree_kb(pids, "VmHWM")
    return BurstResult(
        concurrency=concurrency, requests=len(statuses), seconds=seconds, idle_mb=idle.peak / 1024,
        peak_mb=max(idle.peak, sampler.peak) / 1024,
        hwm_growth_mb=sum(max(0, hwm_after.get(p, 0) - hwm_before.get(p, 0)) for p in pids) / 1024,
        statuses=dict(Counter(statuses)),
    )


async def _send(base_url: str, uploads: list[tuple[str, bytes]], concurrency: int,
                headers: dict[str, str]) -> list[int]:
    queue = list(reversed(uploads))
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=120, headers=headers) as client:

        async def worker() -> None:
            while queue:
                name, data = queue.pop()
                resp = await client.post("/predict", files={"image": (name, data, "application/octet-stream")})
                statuses.append(resp.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def report(result: BurstResult) -> str:
    """The result as lines for the benchmark's output."""
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(result.statuses.items()))
    return (f"burst of oversized uploads: {result.requests} requests at c={result.concurrency} in "
            f"{result.seconds:.1f} s (statuses {codes})\n"
            f"  server resident memory: idle {result.idle_mb:.0f} MB, peak {result.peak_mb:.0f} MB, growth "
            f"{result.growth_mb:.0f} MB (sum of per-process peak growth, VmHWM: {result.hwm_growth_mb:.0f} MB)")
