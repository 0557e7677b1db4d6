"""Wall time of the training flow on the default cohort: stages, orchestration overhead, an unchanged re-run.

For each Prefect mode (`ephemeral`: the private API server that `medgate run` starts for itself without
PREFECT_API_URL, flows/prefect_api.py; `server`: a running `prefect server` on 127.0.0.1 on SQLite,
which this script starts and stops; `postgres`: `medgate server` on a new PostgreSQL database at
MEDGATE_TEST_POSTGRES_URL's server, dropped afterwards), in a fresh temporary workspace and a new PREFECT_HOME:

0. the Prefect home's one-time initialisation (its database created and migrated: what the first
   run on a machine, or the server's first start, does once), timed on its own;
1. `medgate run` as an operator types it (a new process: imports and Prefect start-up included),
2. the same command again with nothing changed;
3. (postgres) the retraining deployment on a `process` work pool (`medgate schedule --pool`), a
   `prefect worker` polling it every --worker-poll-s seconds, and three runs started one after
   another: their scheduling delay, from the run's scheduled start to the worker taking it (Pending)
   and to the flow running in the worker's subprocess (Running), and their wall time (unchanged re-runs).

Reported: each stage's own seconds (the flow's `timings_s`), the first run's total wall time,
the orchestration overhead = total - the stages' own time (interpreter start, imports, Prefect
API start-up and flow/task bookkeeping, registry writes, reports), and the unchanged re-run's wall
time. Targets: overhead <= 20% of the first run; unchanged re-run <= 15% of the first run. The
one-time initialisation is printed beside them, and the overhead with it added.

    python benchmarks/pipeline.py [--modes ephemeral,server,postgres] [--worker-poll-s 10] [--json out.json]

Uses params.yaml as it is (the default cohort and training); takes several minutes per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from flows.settings import configure_offline  # noqa: E402

OVERHEAD_TARGET, RERUN_TARGET = 0.20, 0.15


def make_workspace(root: Path) -> Path:
    """The project's params.yaml and dvc.yaml in a fresh folder, `components` linked for dvc.yaml's deps."""
    root.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(PROJECT / name, root / name)
    (root / "components").symlink_to(PROJECT / "components")
    return root


def medgate_run(ws: Path, env: dict[str, str]) -> tuple[float, dict]:
    """Wall seconds of `medgate run` in a new process, and the run's summary.json."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cli", "run", "--workspace", str(ws)], cwd=PROJECT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"medgate run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    runs = sorted((ws / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    return wall, json.loads(runs[-1].read_text())


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    from services.processes import find_free_port

    port = find_free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    stop(proc)
    raise SystemExit("prefect server did not become healthy within 120 s")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def measure(mode: str, scratch: Path, worker_poll_s: float) -> dict:
    if mode != "postgres":
        return measure_runs(mode, scratch, {})
    from tests.scale.servers import postgres_database, with_driver

    with postgres_database("medgate_bench") as url:
        return measure_runs(mode, scratch, {"PREFECT_SERVER_DATABASE_CONNECTION_URL": with_driver(url, "postgresql+asyncpg")}, worker_poll_s)


def measure_runs(mode: str, scratch: Path, server_env: dict[str, str], worker_poll_s: float | None = None) -> dict:
    """The figures of one mode; `server_env` names the server's database (default: SQLite in PREFECT_HOME)."""
    env = {**os.environ, "PREFECT_HOME": str(scratch / "prefect"), "BENTOML_HOME": str(scratch / "bentoml")}
    env.pop("PREFECT_API_URL", None)
    env.pop("MEDGATE_DATABASE_URL", None)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env={**env, **server_env}, check=True, capture_output=True)
    init_s = time.monotonic() - started
    server = None
    pool: dict = {}
    if mode != "ephemeral":
        server, env["PREFECT_API_URL"] = start_server({**env, **server_env})
    try:
        ws = make_workspace(scratch / "ws")
        first_wall, first = medgate_run(ws, env)
        rerun_wall, rerun = medgate_run(ws, env)
        if worker_poll_s is not None:
            pool = work_pool_run(ws, env, env["PREFECT_API_URL"], worker_poll_s, scratch)
    finally:
        if server is not None:
            stop(server)
    stages = first["timings_s"]
    own = sum(stages.values())
    return {
        "mode": mode, "prefect_home_init_s": round(init_s, 1), "first_wall_s": round(first_wall, 1), "stages_s": stages, "stages_total_s": round(own, 1),
        "overhead_s": round(first_wall - own, 1), "overhead_ratio": (first_wall - own) / first_wall,
        "rerun_wall_s": round(rerun_wall, 1), "rerun_ratio": rerun_wall / first_wall, "rerun_stages_s": rerun["timings_s"],
        "rerun_reused": rerun.get("stages_reused"), "rerun_reused_production": rerun.get("reused_production"),
        # A first run that is not promoted packages nothing: its figures are not a whole pipeline's.
        "first_promoted": bool(first.get("gate", {}).get("promote")),
        "first_failed_checks": [f"{c['kind']} {c['metric']}" for c in first.get("gate", {}).get("checks", []) if c["verdict"] == "fail"],
        "work_pool": pool,
    }


def work_pool_run(ws: Path, env: dict[str, str], api: str, poll_s: float, scratch: Path, runs: int = 3) -> dict:
    """`runs` runs, one after another, of the retraining deployment on a `process` work pool, taken by a
    worker polling every `poll_s` s; each started at a random moment of the poll cycle. Delays: the
    median and the range over the runs."""
    import random
    import statistics

    from tests.scale.servers import prefect, scheduling_delay, start_deployment_run, wait_flow_run, worker

    prefect(api, env, "work-pool", "create", "bench", "--type", "process")
    subprocess.run([sys.executable, "-m", "cli", "schedule", "--pool", "bench", "--workspace", str(ws)], cwd=PROJECT, env=env,
                   check=True, capture_output=True)
    delays, walls = [], []
    with worker(api, "bench", env, scratch / "worker.log", poll_s=poll_s):
        for _ in range(runs):
            time.sleep(random.uniform(0, poll_s))
            started = time.monotonic()
            run_id = start_deployment_run(api, f"retrain-flow/{ws.name}-retrain")
            run = wait_flow_run(api, run_id, timeout_s=1800)
            walls.append(time.monotonic() - started)
            if run["state"]["type"] != "COMPLETED":
                raise SystemExit(f"work-pool run ended {run['state']['type']}: see {scratch / 'worker.log'}")
            delays.append(scheduling_delay(api, run_id))

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    return {"worker_poll_s": poll_s, "runs": runs, "to_worker_s": spread([d["to_worker_s"] for d in delays]),
            "to_running_s": spread([d["to_running_s"] for d in delays]), "wall_s": spread(walls)}


def table(results: list[dict]) -> str:
    names = list(dict.fromkeys(k for r in results for k in [*r["stages_s"], *r["rerun_stages_s"]]))
    head = "| | " + " | ".join(f"{r['mode']} first | {r['mode']} re-run" for r in results) + " |"
    lines = [head, "|---" * (1 + 2 * len(results)) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r['stages_s'].get(name, '-')} | {r['rerun_stages_s'].get(name, '-')}" for r in results) + " |")
    lines.append("| **stages' own time** | " + " | ".join(f"{r['stages_total_s']} | {round(sum(r['rerun_stages_s'].values()), 1)}" for r in results) + " |")
    lines.append("| **wall time (total)** | " + " | ".join(f"{r['first_wall_s']} | {r['rerun_wall_s']}" for r in results) + " |")
    lines.append("| **overhead** (total - stages) | " + " | ".join(f"{r['overhead_s']} ({r['overhead_ratio']:.0%} of first; target <= {OVERHEAD_TARGET:.0%}) | -" for r in results) + " |")
    lines.append("| once: Prefect home initialised | " + " | ".join(f"{r['prefect_home_init_s']} | -" for r in results) + " |")
    lines.append("| overhead with that once added | " + " | ".join(
        f"{r['overhead_s'] + r['prefect_home_init_s']:.1f} ({(r['overhead_s'] + r['prefect_home_init_s']) / (r['first_wall_s'] + r['prefect_home_init_s']):.0%}) | -"
        for r in results) + " |")
    lines.append("| **re-run / first** | " + " | ".join(f"- | {r['rerun_ratio']:.0%} (target <= {RERUN_TARGET:.0%})" for r in results) + " |")
    for label, key in (("work pool: scheduled -> worker took it (s, median (range))", "to_worker_s"),
                       ("work pool: scheduled -> running (s)", "to_running_s"), ("work pool: run wall time (s, unchanged)", "wall_s"),
                       ("work pool: runs; worker poll (s)", "poll")):
        lines.append(f"| {label} | " + " | ".join(f"- | {_pool_cell(r['work_pool'], key)}" for r in results) + " |")
    return "\n".join(lines)


def _pool_cell(pool: dict, key: str) -> str:
    if not pool:
        return "-"
    return f"{pool['runs']}; {pool['worker_poll_s']:g}" if key == "poll" else str(pool[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="ephemeral,server,postgres", help="comma-separated: ephemeral, server, postgres")
    parser.add_argument("--worker-poll-s", type=float, default=10.0, help="the work pool's worker polls this often (Prefect's default: 10)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    configure_offline()
    results = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"medgate-bench-{mode}-") as tmp:
            print(f"[{mode}] first run and unchanged re-run on the default cohort ...", flush=True)
            results.append(measure(mode, Path(tmp), args.worker_poll_s))
            r = results[-1]
            print(f"[{mode}] first {r['first_wall_s']} s (overhead {r['overhead_ratio']:.0%}), re-run {r['rerun_wall_s']} s ({r['rerun_ratio']:.0%})", flush=True)
            if not r["first_promoted"]:
                print(f"[{mode}] warning: the first run was not promoted ({', '.join(r['first_failed_checks'])}): it did not package", flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
