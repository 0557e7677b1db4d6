"""Several workspaces, one PostgreSQL registry: two workspaces (two hosts' folders, each with its own data,
salt and BentoML store) run the flow at the same time; a third, with no training data, serves the
production Bento it imported (`bentoml export` / `bentoml import`) and follows a promotion made elsewhere."""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.workspace import INGEST_DIR, create_workspace, tracked_version
from registry import repository as repo
from registry.db import make_session_factory
from services.supervisor import BENTO_HEADER
from tests.scale.conftest import QUICK
from tests.scale.servers import PROJECT, free_port, postgres_database, process_group, tail

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
        assert len(versions) == 2 and [mv.stage for mv in versions.values()].count("production") == 1, versions
        for name, h in hosts.items():
            mv = versions[h["summary"]["model_version"]]
            # The version's lineage names the dataset its own workspace ingested (and its run's dataset row agrees).
            assert mv.dataset_version == tracked_version(h["ws"], INGEST_DIR) == h["summary"]["dataset"]["version"]
            run = repo.get_run(session, h["summary"]["run_id"])
            assert run.dataset.version == mv.dataset_version and run.id == mv.run_id
    assert hosts["a"]["summary"]["dataset"]["version"] != hosts["b"]["summary"]["dataset"]["version"]
    for h in hosts.values():  # either host lists both versions
        listed = json.loads(medgate(h["env"], "models", "list", "--json", "--workspace", str(h["ws"])))
        assert sorted((r["name"], r["version"], r["stage"]) for r in listed) == sorted((MODEL, v, mv.stage) for v, mv in versions.items())


def test_a_host_without_data_serves_the_imported_production_bento_and_follows_a_promotion(shared: Any) -> None:
    root, hosts = shared["root"], shared["hosts"]
    server = create_workspace(root / "serving" / "ws", QUICK)  # params only: no data, no runs
    env = host_env(shared["env"], root / "serving", shared["url"], "salt-serving")
    for h in hosts.values():  # what a deployment host is handed: each run's Bento, exported and imported
        bento = h["summary"]["bento_tag"]
        archive = root / f"{bento.replace(':', '-')}.bento"
        subprocess.run([sys.executable, "-m", "bentoml", "export", bento, str(archive)], env=h["env"], check=True, capture_output=True, timeout=120)
        subprocess.run([sys.executable, "-m", "bentoml", "import", str(archive)], env=env, check=True, capture_output=True, timeout=120)
    assert not (server / "data").exists()
    with make_session_factory(shared["url"])() as session:
        production = repo.get_champion(session, MODEL)
        archived = next(mv for mv in repo.list_versions(session, MODEL) if mv.id != production.id)
        first, other = production.bento_tag, archived.bento_tag

    port = free_port()
    log = root / "serve.log"
    with process_group([sys.executable, "-m", "cli", "serve", "--workspace", str(server), "--port", str(port), "--poll", "1"], env, log) as proc:
        url = f"http://127.0.0.1:{port}"
        assert _served_bento(url, proc, log) == first
        # Elsewhere (host a), the other version is made production again; the server follows.
        medgate(hosts["a"]["env"], "models", "rollback", "--to", f"{MODEL}:{archived.version}", "--reason", "scale test", "--workspace", str(hosts["a"]["ws"]))
        deadline = time.monotonic() + 120
        while (served := _served_bento(url, proc, log)) != other and time.monotonic() < deadline:
            time.sleep(0.5)
        assert served == other, tail(log)


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
