"""Decoding a source's files into pixel shards: in this process, or in a pool of worker processes when
they save more than they cost. Each file is read within the decode limits, screened for burned-in text,
decoded by `components.readers` and stored; whatever fails in one file becomes that file's problem."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from components.config import IngestConfig
from components.data.shards import ShardWriter
from components.privacy.burned_in import BurnedInPolicy
from components.readers import ClipSpec, DecodeLimits, ImageDecodeError, TooLarge, decode
from components.readers.audio import at_rate
from components.readers.base import short_reason

# Starting the worker processes costs up to two seconds here (fresh interpreters import numpy, pydicom,
# Pillow, soundfile, PyAV): fewer chunks than this, or chunks that decode faster than that saves, are
# decoded in this process (benchmarks/intake.py and benchmarks/audio.py measure both).
_POOL_MIN_CHUNKS = 4
_POOL_START_S = 2.0
_MIN_TICKS = 20  # /proc/stat ticks (1/100 s of one CPU) that make an idle share worth trusting


@dataclass(frozen=True)
class Result:
    """What a worker learned from one file: its manifest columns (pseudonyms only), or why it was skipped."""

    file: str
    columns: dict[str, Any] | None = None  # pixel and reader columns; None when the file was skipped
    problem: str = ""


@dataclass(frozen=True)
class Reading:
    """How every file of a source is read (the same in each worker process)."""

    limits: DecodeLimits  # what a file may declare
    clip: ClipSpec  # how clips are sampled and stored
    audio_rate: int  # Hz recordings are resampled to
    burned_in: BurnedInPolicy  # which files at risk of burned-in text are taken (the others: refused, never decoded)


def decode_chunk(src: str, files: Sequence[str], out_dir: str, shard: int, salt: str, reading: Reading,
                 on_file: Callable[[int], None] | None = None) -> list[Result]:
    """Decode `files` (relative to `src`) into shard `shard` of `out_dir` as `reading` says; runs in a
    worker process. Whatever fails in one file (a refusal, a reader's TypeError or MemoryError) is that file's problem."""
    results = []
    with ShardWriter(Path(out_dir), shard) as writer:
        for rel in files:
            try:
                data = read_bounded(os.path.join(src, rel), reading.limits)
                risk = reading.burned_in.judge(data)
                decoded = decode(data, salt, reading.limits, reading.clip)
                if decoded.kind == "audio":
                    decoded = at_rate(decoded, reading.audio_rate)
                if risk is not None:
                    decoded = replace(decoded, columns={**decoded.columns, "burned_in_risk": risk})
            except Exception as exc:  # noqa: BLE001 - one file's failure is reported, never the run's
                known = isinstance(exc, (ImageDecodeError, OSError))  # their messages say what is wrong
                why = short_reason(exc) if known else f"{type(exc).__name__}: {short_reason(exc)}"
                results.append(Result(rel, problem=why))
            else:
                results.append(Result(rel, {**decoded.columns, **writer.add(decoded.array)}))
            if on_file is not None:
                on_file(1)
    return results


def read_bounded(path: str | Path, limits: DecodeLimits) -> bytes:
    """The file's bytes, unless the file alone is larger than the decoded size `limits` allow."""
    with open(path, "rb", buffering=0) as f:  # unbuffered, sized by the open file: half a Path.read_bytes' cost
        if (size := os.fstat(f.fileno()).st_size) > limits.max_bytes:
            raise TooLarge(f"file of {size / 2**20:.1f} MiB is over the limit of {limits.max_bytes / 2**20:.1f} MiB")
        return f.readall()


def worker_count(cfg: IngestConfig) -> int:
    return cfg.workers or len(os.sched_getaffinity(0))


def cpu_ticks() -> tuple[int, int] | None:
    """(idle, all) clock ticks of the machine's CPUs since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat", "rb") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return ticks[3] + ticks[4], sum(ticks)


def spare_cores(since: tuple[int, int] | None) -> float:
    """Cores other than this process's own that were idle since `since` (`cpu_ticks`), at most those this
    process may use less one: how many more processes would decode in parallel with it. Where /proc/stat
    is missing or too little time has passed, the cores the 1-minute load average leaves free."""
    allowed = len(os.sched_getaffinity(0))
    cpus = os.cpu_count() or allowed
    now = cpu_ticks()
    if since is not None and now is not None and now[1] - since[1] >= _MIN_TICKS:
        idle = (now[0] - since[0]) / (now[1] - since[1]) * cpus
    else:
        idle = cpus - os.getloadavg()[0]  # the load includes this process
    return max(0.0, min(allowed - 1.0, idle))


def decode_files(src: Path, files: list[str], cfg: IngestConfig, out_dir: Path, salt: str,
                 reserve_shards: Callable[[int], int], step: Callable[[int], None]) -> Iterator[Result]:
    """Results for `files` (relative to `src`), in order, their pixels in shards of `out_dir` numbered from
    `reserve_shards(n)` for n chunks; `step(k)` after each k files. Chunks are decoded here, each timed,
    while `workers` processes would save less time on the rest than starting them costs (`_POOL_START_S`);
    then a process pool (spawned, since the caller may run threads) decodes the rest, at most two chunks
    per worker in flight. The saving counts only the cores that stayed idle while this process decoded
    (`spare_cores`): on a machine others keep busy, more processes would only share its cores, and the
    pool is not started."""
    size = max(1, cfg.shard_size)
    reading = Reading(DecodeLimits(**cfg.limits.model_dump()), ClipSpec.from_dict(cfg.video.model_dump()),
                       cfg.audio.sample_rate, BurnedInPolicy.of(cfg.accept_burned_in_risk, cfg.video.mask))
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    first = reserve_shards(len(chunks))
    workers = min(worker_count(cfg), len(chunks))
    pooled = workers > 1 and len(chunks) >= _POOL_MIN_CHUNKS
    since = cpu_ticks()
    for k, chunk in enumerate(chunks):
        started = time.monotonic()
        results = decode_chunk(str(src), chunk, str(out_dir), first + k, salt, reading, step)
        parallel = min(workers, 1 + spare_cores(since)) if pooled else 1
        saved = (time.monotonic() - started) * (len(chunks) - k - 1) * (1 - 1 / parallel)
        yield from results
        if pooled and saved > _POOL_START_S:
            break
    else:
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        queue: deque[tuple[int, Future[list[Result]]]] = deque()
        upcoming = iter(list(enumerate(chunks))[k + 1:])

        def submit() -> None:
            nxt = next(upcoming, None)
            if nxt is not None:
                k, chunk = nxt
                queue.append((len(chunk), pool.submit(decode_chunk, str(src), chunk, str(out_dir),
                                                      first + k, salt, reading)))

        for _ in range(2 * workers):
            submit()
        while queue:
            n, future = queue.popleft()
            results = future.result()
            submit()
            step(n)
            yield from results
