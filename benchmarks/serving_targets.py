"""Issue 15's serving targets, as ratios of figures that benchmarks/serving.py measured in one run.

- medgate against the hand-written FastAPI endpoint (benchmarks/fastapi_baseline.py): >= 2x its
  requests per second at concurrency 32; p50 at concurrency 1 no more than 2 ms above its p50 (the
  lower of its one-worker-per-CPU and one-worker servers);
- medgate against the BentoML floor (benchmarks/floor_service.py): >= 0.8 of its requests per second
  at concurrency 32;
- with the width-64 ResNet-18 (a network whose compute outweighs HTTP's): >= 0.8 of the raw model's
  best batched throughput at concurrency 32, and p50 at concurrency 1 within 5 ms of raw batch 1;
- no errors; a burst of oversized uploads grows the server's resident memory by <= 300 MB.
Also shown, without a target: the default network's service against its raw model, and the server CPU time
per request behind the c=1 latency targets (on a loaded machine p50 at c=1 is mostly waiting for a CPU).

The ceilings. When the servers are bound by the CPU, as at concurrency 32 on this machine, requests per second
are in inverse proportion to the server CPU time per request. Any BentoML service running this network spends
at least the floor's time plus the network's, at the network's cheapest batch, per request. The most it can reach
is therefore floor / (floor + network) of the floor's throughput, and FastAPI / (floor + network) of the
FastAPI endpoint's. Both are printed. Where a ceiling is under its target, that target cannot be met by any
BentoML service. The nearest meaningful target is then medgate's own overhead: its server CPU time per
request at most 1.25 times floor + network, which is the 0.8 of the floor target applied to the time that no
BentoML service can avoid. CPU time is less disturbed by the machine's other load than requests per second.
The network's cheapest batch (64 on this machine) is out of reach at concurrency 32 with one worker per CPU:
32 clients make batches of at most 32 / workers (16 here) per worker. The same ratio with the network's time at
that batch is printed beside it, with the same bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from burst_memory import TARGET_GROWTH_MB, BurstResult

if TYPE_CHECKING:
    from serving import LevelResult, RawResult

TARGET_CONCURRENCY = 32
OVER_FASTAPI = 2.0  # throughput at c=32, medgate / FastAPI endpoint
FASTAPI_C1_SLACK_MS = 2.0  # p50 at c=1, medgate - FastAPI endpoint
OF_FLOOR = 0.8  # throughput at c=32, medgate / BentoML floor
WIDE_OF_RAW = 0.8  # width-64 ResNet-18: throughput at c=32 / raw best batch
WIDE_C1_SLACK_MS = 5.0  # width-64 ResNet-18: p50 at c=1 - raw batch-1 p50
WIDE_MODEL = {"width": 64, "depth": 18}
OF_UNAVOIDABLE = 1 / OF_FLOOR  # server CPU-ms/request at c=32, medgate / (floor + network at its cheapest batch)

Row = tuple[str, str, float | int, str, float | None, bool]  # route, name, value, comparison, goal, met


def targets(raw: RawResult, levels: list[LevelResult], burst: BurstResult | None, wide: dict[str, Any] | None) -> list[Row]:
    """The rows of the targets table; a target whose figures were not measured is left out."""
    single = {(r.route, r.concurrency): r for r in levels if r.images == 1}
    c32, rows = TARGET_CONCURRENCY, []
    medgate = (single.get(("bento", 1)), single.get(("bento", c32)))
    lone = [r for r in (single.get(("fastapi", 1)), single.get(("fastapi-1w", 1))) if r]
    fastapi = (min(lone, key=lambda r: r.p50_ms, default=None), single.get(("fastapi", c32)))
    floor = single.get(("floor", c32))
    if medgate[1] and fastapi[1]:
        rows.append(_at_least("bento", f"req/s at c={c32}: medgate / FastAPI endpoint",
                              medgate[1].per_s / fastapi[1].per_s, OVER_FASTAPI))
    if medgate[0] and fastapi[0]:
        rows.append(_at_most("bento", "p50 at c=1: medgate - FastAPI endpoint (ms)",
                             medgate[0].p50_ms - fastapi[0].p50_ms, FASTAPI_C1_SLACK_MS))
    if medgate[0] and fastapi[0] and medgate[0].server_cpu_ms is not None and fastapi[0].server_cpu_ms is not None:
        rows.append(("bento", "server CPU-ms/request at c=1: medgate - FastAPI endpoint",
                     medgate[0].server_cpu_ms - fastapi[0].server_cpu_ms, "", None, True))
    if medgate[1] and floor:
        rows.append(_at_least("bento", f"req/s at c={c32}: medgate / BentoML floor", medgate[1].per_s / floor.per_s, OF_FLOOR))
    rows += _ceiling_rows(raw, medgate[1], fastapi[1], floor)
    best = raw.best[1]
    if medgate[1]:
        rows.append(("bento", f"images/s at c={c32} / raw best batch (default net)", medgate[1].per_s / best, "", None, True))
    rows += [("bento", f"images/s of /predict_batch x{r.images} / raw best batch", r.per_s * r.images / best, "", None, True)
             for r in levels if r.images > 1 and r.route == "bento"]
    if wide is not None:
        rows += _wide_rows(wide)
    for route in dict.fromkeys(r.route for r in levels):
        errors = sum(r.errors for r in levels if r.route == route)
        rows.append((route, "errors", errors, "<=", 0, errors == 0))
    if burst is not None:
        rows.append(_at_most("bento", "memory growth, burst of oversized uploads (MB)", burst.growth_mb, TARGET_GROWTH_MB))
    return rows


def _ceiling_rows(raw: RawResult, medgate: LevelResult | None, fastapi: LevelResult | None,
                  floor: LevelResult | None) -> list[Row]:
    """The highest throughput ratios any BentoML service running this network can reach, and medgate's CPU
    time per request against that unavoidable time (see the module's docstring)."""
    if floor is None or not floor.server_cpu_ms or not raw.cpu_ms_per_image:
        return []
    network = min(raw.cpu_ms_per_image.values())
    unavoidable = floor.server_cpu_ms + network
    c32 = TARGET_CONCURRENCY
    rows: list[Row] = [("bento", f"ceiling of req/s at c={c32} / BentoML floor: floor / (floor + network) CPU-ms",
                        floor.server_cpu_ms / unavoidable, "", None, True)]
    if fastapi is not None and fastapi.server_cpu_ms:
        rows.append(("bento", f"ceiling of req/s at c={c32} / FastAPI endpoint: FastAPI / (floor + network) CPU-ms",
                     fastapi.server_cpu_ms / unavoidable, "", None, True))
    if medgate is not None and medgate.server_cpu_ms:
        rows.append(_at_most("bento", f"server CPU-ms/request at c={c32}: medgate / (floor + network)",
                             medgate.server_cpu_ms / unavoidable, OF_UNAVOIDABLE))
        reachable = [b for b in raw.cpu_ms_per_image if b <= c32 // raw.callers]
        if reachable:
            batch = max(reachable)
            rows.append(_at_most("bento", f"server CPU-ms/request at c={c32}: medgate / (floor + network at batch {batch}, "
                                 f"the most {c32} clients make per worker)",
                                 medgate.server_cpu_ms / (floor.server_cpu_ms + raw.cpu_ms_per_image[batch]), OF_UNAVOIDABLE))
    return rows


def _wide_rows(wide: dict[str, Any]) -> list[Row]:
    """The width-64 ResNet-18 rows, from the JSON report of serving.py's run on that network."""
    raw = wide["raw"]
    service = {r["concurrency"]: r for r in wide["service"] if r["route"] == "bento" and r["images"] == 1}
    rows = []
    if TARGET_CONCURRENCY in service:
        rows.append(_at_least("wide", f"images/s at c={TARGET_CONCURRENCY} / raw best batch (ResNet-18 w64)",
                              service[TARGET_CONCURRENCY]["per_s"] / raw["best_per_s"], WIDE_OF_RAW))
    if 1 in service:
        rows.append(_at_most("wide", "p50 at c=1 - raw batch-1 p50 (ResNet-18 w64, ms)",
                             service[1]["p50_ms"] - raw["batch1_p50_ms"], WIDE_C1_SLACK_MS))
    if 1 in service and service[1]["server_cpu_ms"] is not None:
        rows.append(("wide", "server CPU-ms/request at c=1 - raw batch-1 CPU-ms/image",
                     service[1]["server_cpu_ms"] - raw["cpu_ms_per_image"]["1"], "", None, True))
    errors = sum(r["errors"] for r in wide["service"])
    rows.append(("wide", "errors", errors, "<=", 0, errors == 0))
    return rows


def _at_least(route: str, name: str, value: float, goal: float) -> Row:
    return route, name, value, ">=", goal, value >= goal


def _at_most(route: str, name: str, value: float, goal: float) -> Row:
    return route, name, value, "<=", goal, value <= goal
