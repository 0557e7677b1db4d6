"""Several workspaces, one PostgreSQL registry: two workspaces (two hosts' folders, each with its own data,
salt and BentoML store) run the flow at the same time; a third, with no training data, serves the
production Bento it imported (`bentoml export` / `bentoml import`) and follows a promotion made elsewhere.
Two hosts' processes with their own stores, not network namespaces: the registry is the only thing they share."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.workspace import INGEST_DIR, create_workspace, tracked_version, update_params
from registry import repository as repo
from registry.db import make_session_factory
from services.supervisor import BENTO_HEADER
from tests.scale.conftest import QUICK
from services.processes import find_free_port
from tests.scale.servers import PROJECT, postgres_database, process_group, tail

pytestmark = pytest.mark.timeout(600)
MODEL = "ct-lesion"


def medgate(env: dict[str, str], *args: str, timeout_s: float = 120) -> str:
    proc = subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=PROJECT, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"medgate {' '.join(args)} ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def host_env(env: dict[str, str], root: Path, url: str, salt: str) -> dict[str, str]:
    """One host's environment: the shared registry, its own BentoML store, Prefect home and de-identification salt."""
    return {**env, "MEDGATE_DATABASE_URL": url, "BENTOML_HOME": str(root / "bentoml"), "PREFECT_HOME": str(root / "prefect-home"),
            "MEDGATE_DEID_SALT": salt}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, postgres: None, bentoml_home: Path) -> Any:
    """Two workspaces' runs, started together, on one fresh PostgreSQL registry."""
    from tests.scale.servers import base_env

    root = tmp_path_factory.mktemp("shared-registry")
    env = {**base_env(root), "BENTOML_HOME": str(bentoml_home)}
    with postgres_database("medgate_registry") as url:
        medgate({**env, "MEDGATE_DATABASE_URL": url}, "db", "upgrade")
        hosts = {}
        for name, seed in (("a", 7), ("b", 8)):  # other patients on each host: two dataset versions
            ws = create_workspace(root / name / "ws", {**QUICK, "cohort": {**QUICK["cohort"], "seed": seed}})
            hosts[name] = {"ws": ws, "env": host_env(env, root / name, url, f"salt-{name}")}
        procs = {
            name: subprocess.Popen([sys.executable, "-m", "cli", "run", "--workspace", str(h["ws"]), "--json"], env=h["env"], cwd=PROJECT,
                                   stdout=subprocess.PIPE, stderr=(root / f"{name}.log").open("wb"), text=True)
            for name, h in hosts.items()
        }
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=480)
            assert proc.returncode == 0, f"run on host {name} ({proc.returncode}): {tail(root / f'{name}.log')}"
            hosts[name]["summary"] = json.loads(out)
        yield {"root": root, "env": env, "url": url, "hosts": hosts}


def test_two_workspaces_promote_into_one_registry(shared: Any) -> None:
    hosts = shared["hosts"]
    with make_session_factory(shared["url"])() as session:
        versions = {mv.version: mv for mv in repo.list_versions(session, MODEL)}
        # One production survives. The other run's candidate was gated (again, when it lost the race to
        # promote) against that champion, tested on the other host's data and not in this host's
        # BentoML store: the change checks cannot be computed, so it is rejected, saying why.
        assert sorted(mv.stage for mv in versions.values()) == ["production", "rejected"], versions
        for name, h in hosts.items():
            mv = versions[h["summary"]["model_version"]]
            # The version's lineage names the dataset its own workspace ingested (and its run's dataset row agrees).
            assert mv.dataset_version == tracked_version(h["ws"], INGEST_DIR) == h["summary"]["dataset"]["version"]
            run = repo.get_run(session, h["summary"]["run_id"])
            assert run.dataset.version == mv.dataset_version and run.id == mv.run_id
            if mv.stage == "rejected":
                assert "could not be evaluated on the candidate's test data" in h["summary"]["gate"]["reason"], h["summary"]["gate"]
    assert hosts["a"]["summary"]["dataset"]["version"] != hosts["b"]["summary"]["dataset"]["version"]
    for h in hosts.values():  # either host lists both versions
        listed = json.loads(medgate(h["env"], "models", "list", "--json", "--workspace", str(h["ws"])))
        assert sorted((r["name"], r["version"], r["stage"]) for r in listed) == sorted((MODEL, v, mv.stage) for v, mv in versions.items())


def test_a_host_without_data_serves_the_imported_production_bento_and_follows_a_promotion(shared: Any) -> None:
    root, hosts = shared["root"], shared["hosts"]
    with make_session_factory(shared["url"])() as session:
        first = repo.get_champion(session, MODEL)
    trainer = next(h for h in hosts.values() if h["summary"]["model_version"] == first.version)  # the host that promoted
    server = create_workspace(root / "serving" / "ws", QUICK)  # params only: no data, no runs
    env = host_env(shared["env"], root / "serving", shared["url"], "salt-serving")
    _copy_bento(first.bento_tag, trainer["env"], env, root)
    assert not (server / "data").exists()

    port = find_free_port()
    log = root / "serve.log"
    with process_group([sys.executable, "-m", "cli", "serve", "--workspace", str(server), "--port", str(port), "--poll", "1"], env, log) as proc:
        url = f"http://127.0.0.1:{port}"
        assert _served_bento(url, proc, log) == first.bento_tag
        # Elsewhere, the trainer's next run (another learning rate) is promoted over it.
        update_params(trainer["ws"], {"train": {"learning_rate": 0.01}})
        summary = json.loads(medgate(trainer["env"], "run", "--workspace", str(trainer["ws"]), "--json", timeout_s=480))
        assert summary["production"]["version"] == summary["model_version"] != first.version, summary.get("gate")
        # Its Bento is not on this host yet: still serving the one it has. Once imported, a SIGHUP
        # (or the next poll of a tag not tried before) moves the server to it.
        assert _served_bento(url, proc, log) == first.bento_tag
        _copy_bento(summary["bento_tag"], trainer["env"], env, root)
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 120
        while (served := _served_bento(url, proc, log)) != summary["bento_tag"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert served == summary["bento_tag"], tail(log)


def _copy_bento(tag: str, source_env: dict[str, str], target_env: dict[str, str], root: Path) -> None:
    """What a deployment host is handed: `bentoml export` where the Bento was built, `bentoml import` there."""
    archive = root / f"{tag.replace(':', '-')}.bento"
    for args, env in ((["export", tag, str(archive)], source_env), (["import", str(archive)], target_env)):
        proc = subprocess.run([sys.executable, "-m", "bentoml", *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"bentoml {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"


def _served_bento(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> str | None:
    """The Bento tag the server answers `/readyz` from, once it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, tail(log)
        try:
            answer = httpx.get(f"{url}/readyz", timeout=5, trust_env=False)
            if answer.status_code == 200:
                return answer.headers.get(BENTO_HEADER)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}/readyz: no 200 within {timeout_s:.0f} s\n{tail(log)}")
