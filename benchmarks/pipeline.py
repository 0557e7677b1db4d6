"""Wall time of the training flow on the default cohort: stages, orchestration overhead, an unchanged re-run.

For each Prefect mode (the private API server that `medgate run` starts for itself without
PREFECT_API_URL, flows/prefect_api.py, and a running `prefect server` on 127.0.0.1 that this script
starts and stops), in a fresh temporary workspace and a new PREFECT_HOME:

0. the Prefect home's one-time initialisation (its database created and migrated: what the first
   run on a machine, or the server's first start, does once), timed on its own;
1. `medgate run` as an operator types it (a new process: imports and Prefect start-up included),
2. the same command again with nothing changed.

Reported: each stage's own seconds (the flow's `timings_s`), the first run's total wall time,
the orchestration overhead = total - the stages' own time (interpreter start, imports, Prefect
API start-up and flow/task bookkeeping, registry writes, reports), and the unchanged re-run's wall
time. Targets: overhead <= 20% of the first run; unchanged re-run <= 15% of the first run. The
one-time initialisation is printed beside them, and the overhead with it added.

    python benchmarks/pipeline.py [--modes ephemeral,server] [--json out.json]

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


def measure(mode: str, scratch: Path) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(scratch / "prefect"), "BENTOML_HOME": str(scratch / "bentoml")}
    env.pop("PREFECT_API_URL", None)
    env.pop("MEDGATE_DATABASE_URL", None)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env, check=True, capture_output=True)
    init_s = time.monotonic() - started
    server = None
    if mode == "server":
        server, env["PREFECT_API_URL"] = start_server(env)
    try:
        ws = make_workspace(scratch / "ws")
        first_wall, first = medgate_run(ws, env)
        rerun_wall, rerun = medgate_run(ws, env)
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
    }


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
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="ephemeral,server", help="comma-separated: ephemeral, server")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    configure_offline()
    results = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"medgate-bench-{mode}-") as tmp:
            print(f"[{mode}] first run and unchanged re-run on the default cohort ...", flush=True)
            results.append(measure(mode, Path(tmp)))
            r = results[-1]
            print(f"[{mode}] first {r['first_wall_s']} s (overhead {r['overhead_ratio']:.0%}), re-run {r['rerun_wall_s']} s ({r['rerun_ratio']:.0%})", flush=True)
            if not r["first_promoted"]:
                print(f"[{mode}] warning: the first run was not promoted ({', '.join(r['first_failed_checks'])}): it did not package", flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
