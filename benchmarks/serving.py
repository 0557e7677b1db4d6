"""Serving benchmark: the production model called in-process against its Bento served on 127.0.0.1, a
hand-written FastAPI endpoint and the BentoML floor, with issue 15's targets as ratios of this run's figures.

    python benchmarks/serving.py [--quick] [--workspace DIR] [--bento TAG] [--concurrency 1,8,32,64]
                                 [--requests 2000] [--seconds 15] [--batch-images 16]
                                 [--via-supervisor] [--api-workers N] [--model-width W]
                                 [--model-depth D] [--image-size S] [--no-floor] [--no-fastapi]
                                 [--no-wide] [--stand-in] [--json PATH]

In one run it measures
- the raw model: the network of the Bento's pinned model, loaded from the BentoML store, called
  in-process on preprocessed input with a server worker's intra-op threads: latency at batch 1, and
  throughput at every power-of-two batch size up to the Bento's `max_batch_size` with as many
  concurrent callers as the Bento has workers (the CPU the service has);
- the service: `/predict` with a `.npy` upload over HTTP, p50/p95/p99 latency, requests per second
  and errors (anything but 200) at each concurrency level, bounded by `--requests` and `--seconds`,
  and the CPU time the server's processes spent per request (which the machine's other load
  disturbs less than the wall-clock figures), and how the server's worker processes shared the clients'
  connections (per round, after the warm-up: "16/16" is an even split; services.balance);
- `/predict_batch` with `--batch-images` images per request at concurrency 8, in images per second;
- with `--via-supervisor`, the same levels again through `medgate serve`'s reloading proxy;
- the framework floor: `benchmarks/floor_service.py`, a BentoML service with the same upload signature
  and worker count that does no work, at concurrency 1 and 32: what BentoML's own handling of such a
  route costs (medgate's upload routes skip it: services.guard) (`--no-floor` skips it);
- the hand-written baseline: `benchmarks/fastapi_baseline.py`, FastAPI + uvicorn serving the same
  network one image per request with one worker per CPU and the Bento's intra-op threads, at
  concurrency 1 and 32, and with one worker at concurrency 1 (`fastapi-1w`: uvicorn's multi-worker
  mode answered a lone client ~40 ms later on the 2-CPU machine; the faster of the two is the baseline)
  (`--no-fastapi` skips it);
- the width-64 ResNet-18 (a network whose compute outweighs HTTP's): this benchmark again in a child
  process on a stand-in of it, raw model and `/predict` at concurrency 1 and 32 (`--no-wide` skips it);
- the load generator's own CPU time per request, since it shares the machine with the server;
- the server's resident memory while it answers a burst of uploads declaring huge images (issue 15's
  forged DICOM, PNG, .nii.gz and .npy; `benchmarks/burst_memory.py`), against its idle size, before
  the throughput levels (`--burst-rounds 0` skips it, `--burst-only` measures only it).

`--quick` is a smoke run (concurrency 1 and 32 for ~2 s each, one burst round, no `/predict_batch`):
its figures are rough; server start-ups take most of its time.

`--model-width`, `--model-depth` and `--image-size` change the stand-in's network, to see the service
with a model whose compute outweighs HTTP's (the default cohort's network takes ~0.5 CPU-ms per image).

The Bento is `--bento`, else the workspace registry's latest production Bento (unless `--stand-in`),
else a stand-in built for the run: the production architecture (params.yaml `train.model`) on the default
cohort's image size, with untrained weights (latency does not depend on weight values), in a temporary
BentoML home.

Targets (`benchmarks/serving_targets.py`; printed as ratios, never asserted). The load generator shares
the machine with the servers, and the machine may be shared with other work: the load average before
and after is printed, and only ratios of figures from the same run are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project: its tests' forged files

from burst_memory import TARGET_GROWTH_MB, BurstResult, measure_burst  # noqa: E402 - after the path is set
from burst_memory import report as burst_report
from serving_targets import TARGET_CONCURRENCY, WIDE_MODEL, targets  # noqa: E402

from flows.settings import configure_offline, get_settings
from tests.images import npy_bytes

BATCH_CONCURRENCY = 8  # of the /predict_batch measurement
BOUNDARY = "medgate-benchmark-boundary"  # of the uploads' multipart bodies


@dataclass
class RawResult:
    threads: int  # intra-op threads of each caller
    callers: int  # concurrent callers of the batched measurements (the service's workers)
    batch1_p50_ms: float
    batch1_per_s: float
    per_batch: dict[int, float]  # batch size -> images per second
    cpu_ms_per_image: dict[int, float]  # batch size -> CPU time of this process per image

    @property
    def best(self) -> tuple[int, float]:
        size = max(self.per_batch, key=self.per_batch.__getitem__)
        return size, self.per_batch[size]


@dataclass
class LevelResult:
    route: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_ms: float | None  # CPU time per request of the Bento's processes (and the proxy's thread)
    client_cpu_ms: float | None = None  # CPU time per request of the load generator (this process)
    images: int = 1  # per request: 1 for /predict, more for /predict_batch
    # Per round: the open connections each of the server's processes held after the warm-up (how the
    # workers shared the clients' connections).
    connections: list[list[int]] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # sorted; left out of the JSON report

    @property
    def per_s(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    configure_offline()
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        bento_tag, origin = _choose_bento(args, stack)
        import bentoml

        from components.data.artifacts import MODEL_REF_FILE
        from services.settings import ServingSettings

        bento = bentoml.bentos.get(bento_tag)
        settings = ServingSettings.read(Path(bento.path_of(f"src/services/{MODEL_REF_FILE}")))
        model_dir = Path(bentoml.models.get(settings.model_tag).path)
        image = _stored_image(model_dir)
        print(f"bento {bento_tag} ({origin}); model {settings.model_tag}; input {settings.input_shape}")
        print(f"machine: {os.cpu_count()} CPUs, load average {_fmt_load(load_before)} before the run")

        workers = settings.api_workers or len(os.sched_getaffinity(0))
        raw = None if args.burst_only else measure_raw(
            model_dir, image, settings.torch_threads, workers, settings.max_batch_size, args.raw_seconds)
        payload = npy_bytes(image)
        routes = [("bento", lambda: _serve_direct(bento_tag, stack))]
        if args.via_supervisor and not args.burst_only:
            routes.append(("supervisor", lambda: _serve_supervised(bento_tag, stack)))
        if args.floor and not args.burst_only:
            routes.append(("floor", lambda: _serve_floor(workers, stack)))
        if args.fastapi and not args.burst_only:
            # One uvicorn worker per CPU, as a team would run it, whatever the Bento's worker count.
            cpus = len(os.sched_getaffinity(0))
            routes.append(("fastapi", lambda: _serve_fastapi(model_dir, settings.torch_threads, cpus, stack)))
            if cpus > 1:  # uvicorn --workers 2 answers a lone client ~40 ms later than one worker does, here
                routes.append(("fastapi-1w", lambda: _serve_fastapi(model_dir, settings.torch_threads, 1, stack)))
        levels: list[LevelResult] = []
        burst: BurstResult | None = None
        servers: dict[str, tuple[str, Callable[[], float], int]] = {}
        for route, start in routes:
            base_url, ready_s, cpu_probe, pid = start()
            print(f"{route}: ready in {ready_s:.1f} s at {base_url}")
            servers[route] = (base_url, cpu_probe, pid)
            if route == "bento" and (args.burst_rounds or args.burst_only):
                from tests.images import FORGED

                uploads = {f"forged-{kind}": make() for kind, make in FORGED.items()}
                burst = measure_burst(base_url, pid, uploads, rounds=args.burst_rounds or 8)
                print(burst_report(burst))
        if raw is not None:
            levels = measure_interleaved(servers, payload, args)
    if raw is None:
        assert burst is not None
        met = burst.growth_mb <= TARGET_GROWTH_MB
        print(f"\ntarget: memory growth {burst.growth_mb:.0f} MB <= {TARGET_GROWTH_MB:.0f}: {'met' if met else 'MISSED'}")
        if args.json:
            Path(args.json).write_text(json.dumps({"burst": {**asdict(burst), "growth_mb": burst.growth_mb}}, indent=2))
        return 0
    wide = _measure_wide(args) if args.wide else None
    report = _report(raw, levels, load_before, os.getloadavg(), burst, wide)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def measure_raw(
    model_dir: Path, image: np.ndarray, threads: int, workers: int, max_batch: int, budget_s: float
) -> RawResult:
    """The pinned network in-process (forward + softmax), with each caller on `threads` intra-op threads
    (0: PyTorch's default) as in one server worker: batch-1 latency of one caller, and images/s per batch
    size of `workers` callers at once (Python threads; PyTorch releases the GIL), the CPU the service has."""
    import torch

    from components.ml.models import load_model
    from components.ml.transforms import preprocess

    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)  # process-wide: applies to every calling thread
    try:
        network, spec = load_model(model_dir)
        one = torch.from_numpy(preprocess(image, spec.preprocessing)[np.newaxis])
        sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
        per_size_s = budget_s / (len(sizes) + 1)

        def forward(x: torch.Tensor) -> None:
            with torch.inference_mode():
                torch.softmax(network(x).float(), dim=1)

        for _ in range(3):
            forward(one)
        batch1 = _timed_calls(lambda: forward(one), per_size_s * 2, min_calls=20)
        per_batch, cpu_ms = {}, {}
        with ThreadPoolExecutor(workers) as pool:
            for size in sizes:
                x = one.repeat(size, *[1] * (one.ndim - 1))
                forward(x)
                cpu_before, started = time.process_time(), time.perf_counter()
                calls = sum(pool.map(lambda _, x=x: len(_timed_calls(lambda: forward(x), per_size_s, 3)), range(workers)))
                elapsed = time.perf_counter() - started
                cpu_ms[size] = (time.process_time() - cpu_before) * 1000 / (size * calls)
                per_batch[size] = size * calls / elapsed
        return RawResult(
            threads=torch.get_num_threads(),
            callers=workers,
            batch1_p50_ms=statistics.median(batch1) * 1000,
            batch1_per_s=1 / statistics.mean(batch1),
            per_batch=per_batch,
            cpu_ms_per_image=cpu_ms,
        )
    finally:
        torch.set_num_threads(previous)


def measure_interleaved(
    servers: dict[str, tuple[str, Callable[[], float], int]], payload: bytes, args: argparse.Namespace
) -> list[LevelResult]:
    """Every server at its levels (the Bento at each of `args.concurrency`, the others at 1 and 32; the
    Bento's `/predict_batch` at concurrency 8), each level's requests and seconds split into `args.rounds`
    rounds in which the servers take turns, so that the machine's varying load falls on all of them alike."""
    plan = [
        (c, route, 1)
        for c in dict.fromkeys(args.concurrency)
        for route in servers
        if route in ("bento", "supervisor") or c == 1 or (c == TARGET_CONCURRENCY and route != "fastapi-1w")
    ]
    if args.batch_images > 1 and "bento" in servers:
        plan.append((BATCH_CONCURRENCY, "bento", args.batch_images))
    merged = []
    for level in dict.fromkeys((c, images) for c, _, images in plan):
        pieces: dict[str, list[LevelResult]] = {}
        for _ in range(args.rounds):
            for c, route, images in (step for step in plan if (step[0], step[2]) == level):
                requests = args.requests if images == 1 else max(4 * BATCH_CONCURRENCY, args.requests // images)
                base_url, probe, pid = servers[route]
                pieces.setdefault(route, []).extend(asyncio.run(measure_service(
                    base_url, route, payload, [c], -(-requests // args.rounds), args.seconds / args.rounds,
                    cpu_probe=probe, images=images, server_pid=pid,
                )))
        for route_pieces in pieces.values():
            merged.append(r := _merge(route_pieces))
            path = "/predict" if r.images == 1 else f"/predict_batch x{r.images}"
            shares = ", ".join("/".join(map(str, c)) for c in r.connections if len(c) > 1)
            print(f"  {r.route} {path} c={r.concurrency}: {r.requests} requests, {r.per_s:.0f}/s, "
                  f"p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, errors {r.errors}"
                  + (f"; connections per worker {shares}" if shares else ""), flush=True)
    return merged


def _merge(pieces: list[LevelResult]) -> LevelResult:
    """One level's rounds as one result: requests, errors and seconds summed, percentiles of all latencies."""
    requests = sum(p.requests for p in pieces)
    ms = sorted(x for p in pieces for x in p.latencies_ms) or [float("nan")]

    def per_request(values: list[tuple[float | None, int]]) -> float | None:
        if not requests or any(v is None for v, _ in values):
            return None
        return sum(v * n for v, n in values if v is not None) / requests

    return LevelResult(
        route=pieces[0].route,
        concurrency=pieces[0].concurrency,
        requests=requests,
        errors=sum(p.errors for p in pieces),
        seconds=sum(p.seconds for p in pieces),
        p50_ms=_percentile(ms, 50),
        p95_ms=_percentile(ms, 95),
        p99_ms=_percentile(ms, 99),
        server_cpu_ms=per_request([(p.server_cpu_ms, p.requests) for p in pieces]),
        client_cpu_ms=per_request([(p.client_cpu_ms, p.requests) for p in pieces]),
        images=pieces[0].images,
        connections=[c for p in pieces for c in p.connections],
        error_samples=sorted({e for p in pieces for e in p.error_samples})[:5],
        latencies_ms=ms,
    )


async def measure_service(
    base_url: str,
    route: str,
    payload: bytes,
    levels: list[int],
    max_requests: int,
    max_seconds: float,
    cpu_probe: Callable[[], float] | None = None,
    images: int = 1,
    server_pid: int | None = None,
) -> list[LevelResult]:
    """`/predict` (or `/predict_batch` with `images` per request) at each concurrency level:
    `max_requests` (or `max_seconds`) after a short warm-up.

    `cpu_probe()`: CPU seconds used so far by the server, to report its CPU time per request.
    `server_pid`: the server's process, to report how its processes share the connections.
    """
    import aiohttp

    path, field_name = ("/predict", "image") if images == 1 else ("/predict_batch", "images")
    body = upload_body(payload, field_name, images)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if key := os.environ.get("MEDGATE_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    results = []
    for concurrency in levels:
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:
            await _load(session, path, body, headers, concurrency, concurrency * 2, 30.0)  # warm-up, not counted
            port = int(base_url.rsplit(":", 1)[1])
            held = _connections_per_process(server_pid, port) if server_pid else []
            cpu_before = cpu_probe() if cpu_probe else None
            client_before = time.process_time()
            r = await _load(session, path, body, headers, concurrency, max_requests, max_seconds, route=route)
            client_s = time.process_time() - client_before
            r.images = images
            r.connections = [held] if held else []
            if cpu_before is not None and cpu_probe is not None and r.requests:
                r.server_cpu_ms = (cpu_probe() - cpu_before) * 1000 / r.requests
            if r.requests and route != "supervisor":  # the supervisor's proxy thread runs in this process
                r.client_cpu_ms = client_s * 1000 / r.requests
            results.append(r)
    return results


async def _load(
    session: Any,
    path: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    route: str = "",
) -> LevelResult:
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def client() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            sent = time.perf_counter()
            try:
                async with session.post(path, data=body, headers=headers) as resp:
                    text = await resp.read()
                    if resp.status != 200:
                        errors.append(f"HTTP {resp.status}: {text[:120]!r}")
            except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever its type
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    return LevelResult(
        route=route,
        concurrency=concurrency,
        requests=len(latencies),
        errors=len(errors),
        seconds=elapsed,
        p50_ms=_percentile(ms, 50),
        p95_ms=_percentile(ms, 95),
        p99_ms=_percentile(ms, 99),
        server_cpu_ms=None,
        error_samples=sorted(set(errors))[:5],
        latencies_ms=ms,
    )


def _report(
    raw: RawResult, levels: list[LevelResult], load_before: tuple[float, ...], load_after: tuple[float, ...],
    burst: BurstResult | None, wide: dict[str, Any] | None,
) -> dict[str, Any]:
    best_size, best_per_s = raw.best
    print(f"\nraw model in-process ({raw.threads} intra-op thread(s) per caller; {raw.callers} caller(s) at once when batched):")
    print(f"  batch 1: p50 {raw.batch1_p50_ms:.2f} ms, {raw.batch1_per_s:.0f} images/s")
    print("  " + ", ".join(f"batch {b}: {v:.0f}/s" for b, v in raw.per_batch.items()))
    print(f"  best: batch {best_size}, {best_per_s:.0f} images/s")
    print("  CPU ms per image: " + ", ".join(f"batch {b}: {v:.2f}" for b, v in raw.cpu_ms_per_image.items()))
    print("\nservice: /predict with one .npy image per request (img/req 1), /predict_batch with more:")
    print(
        f"  {'route':<11}{'img/req':>8}{'conc':>5}{'requests':>10}{'req/s':>8}{'images/s':>9}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'server CPU ms/req':>19}{'client CPU ms/req':>19}"
    )
    for r in levels:
        cpu, client = (f"{v:.2f}" if v is not None else "-" for v in (r.server_cpu_ms, r.client_cpu_ms))
        print(
            f"  {r.route:<11}{r.images:>8}{r.concurrency:>5}{r.requests:>10}{r.per_s:>8.0f}{r.per_s * r.images:>9.0f}"
            f"{r.p50_ms:>9.1f}{r.p95_ms:>9.1f}{r.p99_ms:>9.1f}{r.errors:>8}{cpu:>19}{client:>19}"
        )
        for sample in r.error_samples:
            print(f"      {sample}")
    rows = targets(raw, levels, burst, wide)
    print(f"\ntargets (ratios of figures measured in this run; {os.cpu_count()} CPUs, load average "
          f"{_fmt_load(load_before)} before and {_fmt_load(load_after)} after):")
    for route, name, value, comparison, goal, met in rows:
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        verdict = "(no target)" if goal is None else f"target {comparison} {goal}: {'met' if met else 'MISSED'}"
        print(f"  {route:<11}{name:<58}{shown:>8}  {verdict}")
    return {
        "raw": {**asdict(raw), "best_batch": best_size, "best_per_s": best_per_s},
        "service": [{**asdict(r), "per_s": r.per_s, "latencies_ms": None} for r in levels],
        "targets": [dict(zip(("route", "target", "value", "comparison", "goal", "met"), t)) for t in rows],
        "burst": {**asdict(burst), "growth_mb": burst.growth_mb} if burst is not None else None,
        "wide": wide,
        "load_average": {"before": load_before, "after": load_after},
        "cpus": os.cpu_count(),
    }


def _choose_bento(args: argparse.Namespace, stack: contextlib.ExitStack) -> tuple[str, str]:
    """`--bento`, else the registry's production Bento, else a stand-in built in a temporary BentoML home."""
    tag = args.bento or (None if args.stand_in else _production_bento(args.workspace))
    if tag:
        import bentoml
        from bentoml.exceptions import NotFound

        try:
            bentoml.bentos.get(tag)
        except NotFound:
            raise SystemExit(f"Bento {tag} is not in the BentoML store at {_bentoml_home()}: set BENTOML_HOME") from None
        return tag, "as given" if args.bento else "the registry's production Bento"
    # Before BentoML first opens a store, so that the stand-in never lands in the user's store.
    home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medgate-bench-")))
    os.environ["BENTOML_HOME"] = str(home / "bentoml")
    package = {k: v for k, v in (("api_workers", args.api_workers), ("max_batch_size", args.max_batch_size)) if v is not None}
    model = {k: v for k, v in (("width", args.model_width), ("depth", args.model_depth)) if v is not None}
    origin = "stand-in: " + (f"production architecture with {model}" if model else "production architecture")
    return _build_stand_in(home, args.workspace, package, model, args.image_size), origin + ", untrained weights"


def _production_bento(workspace: Path | None) -> str | None:
    from cli.common import sessions_for
    from registry import repository as repo

    url = get_settings(workspace).database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    with sessions_for(workspace)() as session:
        production = repo.latest_production(session)
        return production.bento_tag if production is not None else None


def _build_stand_in(
    home: Path, workspace: Path | None, package: dict[str, int], model: dict[str, int], image_size: int | None
) -> str:
    """A Bento of the production architecture on the default cohort's image size; `package` overrides
    params.yaml's package section (to try serving settings), `model` its train.model section and
    `image_size` the input size (to measure a model whose compute outweighs HTTP's)."""
    from components.config import load_params
    from components.ml.models import ModelSpec, build_model, save_model
    from components.stages.package import build_bento, save_to_model_store
    from services.settings import settings_for_model
    from components.ml.transforms import Preprocessing

    params = load_params(get_settings(workspace).workspace / "params.yaml")
    size = image_size or min(params.cohort.image_size, params.prepare.max_size)
    half = params.prepare.window_width / 2
    spec = ModelSpec(
        model=params.train.model.model_copy(update=model),
        input_shape=(1, size, size),
        class_names=("normal", "lesion"),
        preprocessing=Preprocessing(
            (size, size), 1, params.prepare.window_level - half, params.prepare.window_level + half
        ),
    )
    save_model(build_model(spec.model, spec.input_shape, len(spec.class_names)), spec, home / "model")
    model_tag, _ = save_to_model_store(home / "model", "benchmark-stand-in", {"dataset_version": "none"})
    print(f"no production Bento recorded: building a stand-in from {model_tag} in {home}")
    package_cfg = params.package.model_copy(update=package)
    print(f"package settings: {package_cfg.model_dump()}")
    settings = settings_for_model(model_tag, package_cfg, params.serve)
    return build_bento(settings.to_dict(), {"purpose": "benchmark"}, name=package_cfg.model_name)


def _serve_direct(
    target: str, stack: contextlib.ExitStack, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[str, float, Callable[[], float], int]:
    """`bentoml serve target` on a free port: its URL, seconds to ready, a probe of its CPU seconds, its pid."""
    from services.processes import find_free_port, serve_in_background, wait_until_ready

    port = find_free_port()
    log = stack.enter_context(tempfile.TemporaryFile("w+b"))  # noqa: SIM115 - the ExitStack closes it
    started = time.perf_counter()
    proc = stack.enter_context(serve_in_background(target, port, log=log, env=env, cwd=cwd))
    base = f"http://127.0.0.1:{port}"
    problem = wait_until_ready(base, proc, timeout_s=180)
    if problem:
        log.seek(0)
        raise SystemExit(f"{target}: {problem}\n{log.read().decode(errors='replace')[-3000:]}")
    return base, time.perf_counter() - started, lambda: _tree_cpu_s(proc.pid), proc.pid


def _serve_floor(workers: int, stack: contextlib.ExitStack) -> tuple[str, float, Callable[[], float], int]:
    """benchmarks/floor_service.py served like the Bento, with as many workers."""
    env = {"MEDGATE_FLOOR_WORKERS": str(workers)}  # floor_service.WORKERS_ENV
    return _serve_direct("floor_service:Floor", stack, env=env, cwd=Path(__file__).parent)


def _serve_fastapi(
    model_dir: Path, threads: int, workers: int, stack: contextlib.ExitStack
) -> tuple[str, float, Callable[[], float], int]:
    """benchmarks/fastapi_baseline.py under uvicorn with `workers` workers and the Bento's intra-op threads."""
    import subprocess
    import sys

    from services.processes import find_free_port, wait_until_ready

    port = find_free_port()
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": str(here.parent), "MEDGATE_BASELINE_MODEL": str(model_dir),
           "MEDGATE_BASELINE_THREADS": str(threads)}  # fastapi_baseline.MODEL_ENV, THREADS_ENV
    log = stack.enter_context(tempfile.TemporaryFile("w+b"))  # noqa: SIM115 - the ExitStack closes it
    command = [sys.executable, "-m", "uvicorn", "fastapi_baseline:app", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=here, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(_stop_group, proc)
    base = f"http://127.0.0.1:{port}"
    if problem := wait_until_ready(base, proc, timeout_s=180):
        log.seek(0)
        raise SystemExit(f"fastapi_baseline: {problem}\n{log.read().decode(errors='replace')[-3000:]}")
    return base, time.perf_counter() - started, lambda: _tree_cpu_s(proc.pid), proc.pid


def _stop_group(proc: Any) -> None:
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
            return


def _measure_wide(args: argparse.Namespace) -> dict[str, Any] | None:
    """This benchmark on a stand-in width-64 ResNet-18 (raw model and /predict at c=1 and c=32), in a child
    process with its own temporary BentoML home: its JSON report, or None when it failed."""
    import subprocess
    import sys

    print(f"\n--- the same measurements on a stand-in ResNet-{WIDE_MODEL['depth']} of width {WIDE_MODEL['width']} ---",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="medgate-bench-wide-") as tmp:
        out = Path(tmp) / "wide.json"
        command = [
            sys.executable, __file__, "--stand-in", "--model-width", str(WIDE_MODEL["width"]),
            "--model-depth", str(WIDE_MODEL["depth"]), "--concurrency", f"1,{TARGET_CONCURRENCY}",
            "--requests", str(args.requests), "--seconds", str(args.seconds), "--raw-seconds", str(args.raw_seconds),
            "--rounds", str(args.rounds),
            "--no-floor", "--no-fastapi", "--no-wide", "--burst-rounds", "0", "--batch-images", "0", "--json", str(out),
            *(["--workspace", str(args.workspace)] if args.workspace else []),
        ]
        if subprocess.run(command, check=False).returncode != 0 or not out.is_file():
            print("the width-64 run failed: its targets are left out")
            return None
        return json.loads(out.read_text())


def _serve_supervised(bento_tag: str, stack: contextlib.ExitStack) -> tuple[str, float, Callable[[], float], int]:
    from services.processes import find_free_port
    from services.supervisor import run_in_thread

    port = find_free_port()
    log = stack.enter_context(tempfile.TemporaryFile("w+b"))  # noqa: SIM115 - the ExitStack closes it
    started = time.perf_counter()
    handle = stack.enter_context(run_in_thread(lambda: bento_tag, port, backend_log=log, poll_s=0))
    assert handle.backend is not None
    backend_pid = handle.backend.proc.pid

    def cpu_s() -> float:  # the Bento's processes and the proxy's thread
        return _tree_cpu_s(backend_pid) + _stat_cpu_s(Path(f"/proc/self/task/{handle.thread_id}/stat"))

    return f"http://127.0.0.1:{port}", time.perf_counter() - started, cpu_s, backend_pid


def _stored_image(model_dir: Path) -> np.ndarray:
    """An image as the data stores it: the model's spatial size, intensities spread over its window."""
    from components.ml.models import ModelSpec

    spec = ModelSpec.from_dict(json.loads((model_dir / "model.json").read_text()))
    pre = spec.preprocessing
    shape = (*pre.spatial_size, pre.channels) if pre.channels > 1 else pre.spatial_size
    return np.random.default_rng(0).uniform(pre.lower, pre.upper, shape).astype(np.float32)


def _timed_calls(fn: Any, budget_s: float, min_calls: int) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_calls or time.perf_counter() < deadline:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _read_stat(stat: Path) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds) from a /proc stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_cpu_s(stat: Path) -> float:
    return _read_stat(stat)[1]


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` and everything below it (Linux /proc)."""
    stats: dict[int, tuple[int, float]] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(path.parent.name)] = _read_stat(path)
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
    tree, todo = {pid}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _) in stats.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                todo.append(child)
    return sum(stats[p][1] for p in tree if p in stats)


def _connections_per_process(pid: int, port: int) -> list[int]:
    """Established connections to local `port` held by each process of `pid`'s tree that holds any, sorted."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    counts = []
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            held = sum(1 for c in proc.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
            if held:
                counts.append(held)
    return sorted(counts)


def upload_body(payload: bytes, field_name: str, images: int = 1) -> bytes:
    """A multipart/form-data body (boundary BOUNDARY) holding `images` copies of the `.npy` `payload` in `field_name`."""
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; filename="image.npy"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + payload + b"\r\n"
    return part * images + f"--{BOUNDARY}--\r\n".encode()


def _percentile(sorted_values: list[float], q: float) -> float:
    return float(np.percentile(sorted_values, q))


def _fmt_load(load: tuple[float, ...]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def _bentoml_home() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=None, help="medgate workspace (default: MEDGATE_WORKSPACE or .)")
    parser.add_argument("--bento", help="Bento tag to serve (default: the production Bento, else a stand-in)")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64], help="levels, e.g. 1,8,32,64"
    )
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per level (after a warm-up of 2 per client), split over the rounds")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per level and server")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of each level, the servers taking turns in each (the load may vary meanwhile)")
    parser.add_argument("--raw-seconds", type=float, default=8.0, help="time for the in-process measurements")
    parser.add_argument("--via-supervisor", action="store_true", help="also measure through medgate serve's proxy")
    parser.add_argument(
        "--batch-images", type=int, default=16, help="also /predict_batch with this many images per request (0: no)"
    )
    parser.add_argument("--api-workers", type=int, help="stand-in only: override package.api_workers")
    parser.add_argument("--model-width", type=int, help="stand-in only: override train.model.width")
    parser.add_argument("--model-depth", type=int, choices=(10, 18, 34), help="stand-in only: override train.model.depth")
    parser.add_argument("--image-size", type=int, help="stand-in only: input height and width")
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the framework floor (benchmarks/floor_service.py)"
    )
    parser.add_argument("--max-batch-size", type=int, help="stand-in only: override package.max_batch_size")
    parser.add_argument("--burst-rounds", type=int, default=8,
                        help="rounds of the four oversized uploads sent at c=16 before the levels (0: none)")
    parser.add_argument("--burst-only", action="store_true", help="measure only the burst of oversized uploads")
    parser.add_argument(
        "--no-fastapi", dest="fastapi", action="store_false",
        help="skip the hand-written FastAPI endpoint (benchmarks/fastapi_baseline.py)",
    )
    parser.add_argument("--no-wide", dest="wide", action="store_false",
                        help="skip the run on a stand-in width-64 ResNet-18")
    parser.add_argument("--stand-in", action="store_true", help="build a stand-in even where a production Bento exists")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: c=1 and 32 only, ~2 s per level, one burst round, no /predict_batch")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.requests, args.seconds, args.raw_seconds = [1, TARGET_CONCURRENCY], 300, 3.0, 2.0
        args.rounds = min(args.rounds, 2)
        args.batch_images, args.burst_rounds = 0, min(args.burst_rounds, 1)
    return args


if __name__ == "__main__":
    raise SystemExit(main())
