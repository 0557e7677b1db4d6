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

The floor is BentoML's own handling of this signature: its API route parses the multipart form into a
temporary file on disk and a pydantic model before any code runs. medgate answers its upload routes in its own
middleware (services.guard), which parses the form once in memory, so it spends less per request than the
floor before its network runs. What is left between them at concurrency 32 is the network: the most a
service running it can reach is floor / (medgate's own CPU time per request + network), and with an own
cost as low as the floor's it is floor / (floor + network). Both the floor's and medgate's server CPU time
per request, and the network's at its cheapest batch, are printed beside the ratio; CPU time is less
disturbed by the machine's other load than requests per second.
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
    rows += _cpu_rows(raw, medgate[1], floor)
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


def _cpu_rows(raw: RawResult, medgate: LevelResult | None, floor: LevelResult | None) -> list[Row]:
    """The server CPU time per request behind the floor ratio (see the module's docstring)."""
    if floor is None or not floor.server_cpu_ms or not raw.cpu_ms_per_image:
        return []
    network = min(raw.cpu_ms_per_image.values())
    c32 = TARGET_CONCURRENCY
    rows: list[Row] = [
        ("bento", f"server CPU-ms/request at c={c32}: BentoML floor", floor.server_cpu_ms, "", None, True),
        ("bento", "CPU-ms/image of the network at its cheapest batch", network, "", None, True),
        ("bento", f"req/s at c={c32} / BentoML floor of a service costing the floor + the network",
         floor.server_cpu_ms / (floor.server_cpu_ms + network), "", None, True),
    ]
    if medgate is not None and medgate.server_cpu_ms:
        rows += [("bento", f"server CPU-ms/request at c={c32}: medgate", medgate.server_cpu_ms, "", None, True),
                 ("bento", f"server CPU-ms/request at c={c32}: medgate - network - floor (its own cost over the floor)",
                  medgate.server_cpu_ms - network - floor.server_cpu_ms, "", None, True)]
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
