"""How fast the review console's pages answer with a registry of 1,000 runs and 200 model versions.

Fills a fresh SQLite registry (in a temporary folder) through the repository's functions, signs in
an approver, then asks each page `--rounds` times in-process (Starlette's TestClient: the app's own
time, no network) and prints the median and the slowest per page, against the 200 ms target.

    python benchmarks/console.py [--runs 1000] [--versions 200] [--rounds 20] [--names 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on the path and its name would hide the console package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starlette.testclient import TestClient  # noqa: E402

from console.app import create_app  # noqa: E402
from console.auth import hash_password  # noqa: E402
from registry import db, repository as repo, users  # noqa: E402
from services.origin import allowed_hosts  # noqa: E402

TARGET_MS = 200.0
NAMES = ("ct-lesion", "pneumoniamnist", "breastmnist", "cine-echo", "dictation")
CHECKS = [
    {"kind": "value", "metric": m, "value": 0.9, "threshold": 0.85, "comparison": ">=", "verdict": "pass", "detail": ""}
    for m in ("auc", "sensitivity", "specificity", "auc_ci_lower", "accuracy", "f1")
]


def summary_of(i: int, name: str, ok: bool, version: str) -> dict[str, Any]:
    """A run summary of a realistic size (about 3 kB)."""
    return {
        "run_id": f"run-{i}", "model_name": name, "trigger": "manual", "status": "completed",
        "dataset": {"source": f"data/{name}", "version": version, "kind": "image", "images": 2000, "patients": 400},
        "validation": {"success": ok, "report": f"/nowhere/{i}/report.html",
                       "failed_expectations": [] if ok else ["class_balance: share of class 1 in [0.2, 0.8]"],
                       "warnings": ["intensity_range: 3 images outside [0, 255]"],
                       "drift": [{"name": "class_share", "value": 0.03, "bound": 0.2, "detail": "", "exceeded": False}]},
        "metrics": {f"m{k}": random.random() for k in range(40)},
        "timings_s": {s: round(random.uniform(0.1, 30), 2) for s in ("ingest", "validate", "prepare", "train", "evaluate", "gate")},
        "gate": {"promote": True, "reason": "all 6 checks passed", "checks": CHECKS},
    }


def fill(url: str, runs: int, versions: int, names: tuple[str, ...]) -> dict[str, str]:
    """The registry at `url` with `runs` runs, `versions` model versions and their decisions; returns
    one run uid and one model name to ask for."""
    sessions = db.make_session_factory(url)
    rng = random.Random(0)
    per_run = max(1, (runs * 6 // 7) // versions)  # one dataset in 7 fails validation: no version from its runs
    with sessions() as s:
        users.add_user(s, "bench", "approver", hash_password("benchmark-password"), actor="bench")
        datasets = [
            repo.record_dataset(s, source=f"data/{NAMES[d % len(NAMES)]}", version=f"{d:032x}", kind="image", num_images=2000,
                                num_patients=400, counts={"normal": 1000, "lesion": 1000}, class_names=["normal", "lesion"],
                                validation_success=d % 7 != 0, report_path=None)
            for d in range(50)
        ]
        s.commit()
        made = []
        for i in range(runs):
            name, dataset = names[i % len(names)], datasets[i % len(datasets)]
            run = repo.start_run(s, dataset_id=dataset.id, params={"train": {"epochs": 3}}, git_commit="abc123", prefect_flow_run_id=None,
                                 trigger=("manual", "schedule", "watch")[i % 3], triggered_by="alice")
            repo.finish_run(s, run.run_uid, status="completed" if dataset.validation_success else "failed",
                            summary=summary_of(i, name, dataset.validation_success, dataset.version), dataset_id=dataset.id)
            if i % per_run == 0 and len(made) < versions and dataset.validation_success:
                mv = repo.register_model_version(s, name=name, run_id=run.id, dataset_version=dataset.version, test_data_version="t",
                                                 metrics={"auc": rng.uniform(0.8, 0.95), "sensitivity": 0.8, "specificity": 0.8},
                                                 artifact_sha256="ab" * 32, model_tag=f"{name}:m{i}", bento_tag=f"{name}:b{i}")
                repo.record_gate_decision(s, model_version_id=mv.id, promote=i % 3 != 0, checks=CHECKS, champion_version_id=None, reason="ok")
                made.append((mv.id, i % 3 != 0))
        s.commit()
        for version_id, passed in made:
            if passed:
                repo.promote_version(s, version_id, actor="medgate-flow", reason="gate passed", expected_champion_id=repo.ANY_CHAMPION)
            else:
                repo.reject_version(s, version_id, actor="medgate-flow", reason="refused")
        uid = repo.get_run(s, s.get_one(repo.Run, runs // 2).run_uid).run_uid
    sessions.kw["bind"].dispose()
    return {"run": uid, "name": names[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--names", type=int, default=len(NAMES), help="model names the versions spread over (1: all of one name)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medgate-console-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'registry.db'}"
        db.upgrade_database(url)
        started = time.perf_counter()
        picked = fill(url, args.runs, args.versions, NAMES[: max(1, min(args.names, len(NAMES)))])
        print(f"filled {args.runs} runs, {args.versions} model versions in {time.perf_counter() - started:.1f} s")
        sessions = db.make_session_factory(url)
        app = create_app(sessions, Path(tmp), "benchmark-secret", allowed_hosts("testserver"))
        client = TestClient(app, base_url="http://testserver")
        login = client.get("/login")
        csrf = login.text.split('name="csrf" value="')[1].split('"')[0]
        signed = client.post("/login", data={"name": "bench", "password": "benchmark-password", "csrf": csrf, "next": "/runs"},
                             follow_redirects=False)
        assert signed.status_code == 303, signed.text
        name = picked["name"]
        paths = ["/runs", "/runs?quality=failed", "/runs?gate=refused&trigger=manual", "/runs?page=10", f"/runs/{picked['run']}",
                 "/models", f"/models/{name}", f"/models/{name}/2", f"/models/{name}/compare?a=1&b=2", f"/models/{name}/2/card",
                 "/data", "/audit", "/audit?actor=medgate-flow&action=promote", "/audit?page=5"]
        print(f"{'page':48} {'median ms':>10} {'max ms':>8}  vs {TARGET_MS:.0f} ms")
        worst = 0.0
        for path in paths:
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, (path, response.status_code, response.text[:300])
            median, most = statistics.median(times), max(times)
            worst = max(worst, median)
            print(f"{path:48} {median:10.1f} {most:8.1f}  {median / TARGET_MS:.2f}x of target")
        print(f"slowest median {worst:.1f} ms: {'within' if worst < TARGET_MS else 'OVER'} the {TARGET_MS:.0f} ms target")
        sessions.kw["bind"].dispose()


if __name__ == "__main__":
    main()
