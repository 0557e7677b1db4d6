"""The operator commands (`medgate models show|compare|promote|rollback`, `medgate audit`) on a real SQLite
registry, populated with the registry's repository functions; the champion re-evaluation on a real DVC
workspace with a real model in the BentoML store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.common import console
from registry import repository as repo
from registry.db import make_session_factory, upgrade_database
from tests.integration.conftest import make_workspace

pytestmark = pytest.mark.timeout(300)

NAME = "ct-lesion"
GATE = {
    "gate": {"default": {"values": {"auc": {"lower": 0.8}}, "changes": {"auc": {"direction": "higher", "absolute": -0.02}}}},
    "evaluate": {"bootstrap_samples": 20},
}
SHA = {n: f"{n:x}" * 64 for n in range(1, 10)}
TEST_DATA = "e" * 32


@pytest.fixture
def cli(monkeypatch):
    """Run `medgate ARGS --workspace WS` in this process; wide output so long values stay on one line."""
    monkeypatch.setattr(console, "width", 250)
    runner = CliRunner()

    def run(ws: Path, *args: str):
        return runner.invoke(app, [*args, "--workspace", str(ws)], catch_exceptions=False)

    return run


@pytest.fixture
def ws(tmp_path, clean_env):
    from flows.settings import get_settings

    get_settings.cache_clear()
    yield make_workspace(tmp_path / "ws", GATE)
    get_settings.cache_clear()


def registry(ws: Path):
    url = f"sqlite:///{ws / '.medgate' / 'registry.db'}"
    upgrade_database(url)
    return make_session_factory(url)


def add_version(
    ws: Path,
    auc: float,
    *,
    name: str = NAME,
    test_data: str = TEST_DATA,
    production: bool = False,
    packaged: bool = True,
    model_tag: str | None = None,
    bento_tag: str | None = None,
    sha: str | None = None,
) -> int:
    """A version as the flow leaves it: dataset, finished run, version, a passed gate decision with serving parity."""
    from components.config import load_params

    sessions = registry(ws)
    with sessions() as s:
        ds = repo.record_dataset(
            s, source="embedded", version="d" * 32, kind="dicom", num_images=160, num_patients=40,
            counts={"benign": 80, "lesion": 80}, class_names=["benign", "lesion"], validation_success=True,
            report_path=str(ws / "runs" / "r" / "validate" / "report.html"),
        )
        run = repo.start_run(
            s, dataset_id=ds.id, params=load_params(ws / "params.yaml").model_dump(mode="json", by_alias=True),
            git_commit="c0ffee" * 6 + "abcd", prefect_flow_run_id="flow-run-1", trigger="test",
        )
        number = len(repo.list_versions(s, name)) + 1
        mv = repo.register_model_version(
            s, name=name, run_id=run.id, dataset_version="d" * 32, test_data_version=test_data,
            metrics={"auc": auc, "auc_ci_lower": auc - 0.05, "auc_ci_upper": min(auc + 0.04, 1.0), "accuracy": auc - 0.1,
                     "sensitivity": 0.8, "specificity": 0.8, "n_test": 40, "operating_threshold": 0.5},
            artifact_sha256=sha or SHA[number],
            model_tag=(model_tag or f"{name}:model{number}") if packaged else None,
            bento_tag=(bento_tag or f"{name}:bento{number}") if packaged else None,
        )
        repo.record_gate_decision(
            s, model_version_id=mv.id, promote=True, champion_version_id=None, reason="all checks passed",
            checks=[{"kind": "value", "metric": "auc", "value": auc, "threshold": 0.8, "comparison": ">=", "verdict": "pass", "detail": ""},
                    {"kind": "serving", "metric": "serving_parity", "value": 0.0, "threshold": 1e-4, "comparison": "<=",
                     "verdict": "pass", "detail": "4 golden images match"}],
        )
        repo.finish_run(s, run.run_uid, status="completed", dataset_id=ds.id)
        s.commit()
        if production:
            repo.promote_version(s, mv.id, actor="medgate-flow", reason="gate passed", expected_champion_id=repo.ANY_CHAMPION)
        return mv.version


def stages(ws: Path, name: str = NAME) -> dict[int, str]:
    with registry(ws)() as s:
        return {mv.version: mv.stage for mv in repo.list_versions(s, name)}


def audit_rows(cli, ws: Path, *args: str) -> list[dict]:
    out = cli(ws, "audit", "--json", *args)
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_promote_is_refused_with_the_failing_checks_then_an_override_is_audited(cli, ws):
    add_version(ws, 0.90, production=True)
    add_version(ws, 0.85)  # a packaged candidate, 0.05 AUC below production on the same test data

    refused = cli(ws, "models", "promote", "2", "--reason", "newer data")
    assert refused.exit_code == 1, refused.output
    assert "refused:" in refused.output and "change auc -0.0500 gain >= -0.02: fail" in refused.output
    assert "--override" in refused.output
    assert stages(ws) == {1: "production", 2: "candidate"}
    with registry(ws)() as s:
        decision = repo.latest_gate_decision(s, repo.get_version(s, NAME, 2).id)
        assert not decision.promote and decision.reason.startswith("manual gate requested by")
        assert decision.champion_version_id == repo.get_version(s, NAME, 1).id
        # The serving-parity check of the version's last decision is carried into the manual one.
        assert [(c["kind"], c["metric"], c["verdict"]) for c in decision.checks] == [
            ("value", "auc", "pass"), ("value", "sensitivity", "pass"), ("value", "specificity", "pass"),
            ("change", "auc", "fail"), ("serving", "serving_parity", "pass")]
    assert [r["action"] for r in audit_rows(cli, ws)] == ["register", "promote", "register"]

    forced = cli(ws, "models", "promote", f"{NAME}:2", "--reason", "accepted by the clinical lead", "--override", "--actor", "dr-lee")
    assert forced.exit_code == 0, forced.output
    assert "OVERRIDE" in forced.output and "ct-lesion:bento2" in forced.output
    assert stages(ws) == {1: "archived", 2: "production"}
    archive, promote = audit_rows(cli, ws)[-2:]
    assert (archive["action"], archive["version"], archive["to_stage"]) == ("archive", 1, "archived")
    assert (promote["action"], promote["version"], promote["from_stage"], promote["to_stage"]) == ("promote", 2, "candidate", "production")
    assert promote["actor"] == archive["actor"] == "dr-lee"
    assert promote["reason"].startswith("OVERRIDE of a refused gate: accepted by the clinical lead; failing checks: ")
    assert "change auc -0.0500 gain >= -0.02: fail" in promote["reason"]
    # The card of the production version tells it got there by an override, who did it and why.
    card = cli(ws, "models", "show", "2").output
    assert "Stage: **production**" in card and "| dr-lee | promote | candidate -> production | OVERRIDE of a refused gate" in card


def test_a_passing_manual_promotion_and_what_is_never_promoted(cli, ws):
    add_version(ws, 0.90, production=True)
    add_version(ws, 0.91)
    add_version(ws, 0.95, packaged=False)
    rejected = add_version(ws, 0.99)
    with registry(ws)() as s:
        repo.reject_version(s, repo.get_version(s, NAME, rejected).id, actor="medgate-flow", reason="serving parity failed")

    passed = cli(ws, "models", "promote", "v2", "--reason", "better AUC", "--actor", "ops")
    assert passed.exit_code == 0, passed.output
    assert "OVERRIDE" not in passed.output and "PASS" in passed.output
    last = audit_rows(cli, ws)[-1]
    assert last["action"] == "promote" and last["reason"].startswith("manual promotion: better AUC; gate passed")

    for ref, message in (("3", "has no Bento"), ("4", "was rejected"), ("2", "already production")):
        out = cli(ws, "models", "promote", ref, "--reason", "x", "--override")
        assert out.exit_code == 1 and message in out.output, out.output
    assert stages(ws) == {1: "archived", 2: "production", 3: "candidate", 4: "rejected"}

    add_version(ws, 0.9, name="other")
    for ref, code, message in (("2", 2, "several model names"), ("ct-lesion:9", 2, "has no version 9"), ("x:y", 2, "not a model version")):
        out = cli(ws, "models", "promote", ref, "--reason", "x")
        assert out.exit_code == code and message in out.output, out.output


def test_two_manual_promotions_at_once_one_wins(ws, monkeypatch):
    """Both pass the gate against the same champion; the second to lock finds production changed and loses."""
    import threading

    import flows.promotion
    from components.config import load_params
    from flows.promotion import promote_manually
    from registry.errors import PromotionConflict

    add_version(ws, 0.90, production=True)
    add_version(ws, 0.91)
    add_version(ws, 0.92)
    sessions, params = registry(ws), load_params(ws / "params.yaml")
    barrier, results = threading.Barrier(2, timeout=60), {}
    gate = flows.promotion.evaluate_gate

    def gate_then_wait(*args):
        outcome = gate(*args)
        barrier.wait()  # both decisions are made against v1 before either promotes
        return outcome

    monkeypatch.setattr(flows.promotion, "evaluate_gate", gate_then_wait)

    def promote(version: int) -> None:
        try:
            results[version] = promote_manually(sessions, ws, params, NAME, version, reason="race", actor=f"op{version}")
        except PromotionConflict as exc:
            results[version] = exc

    threads = [threading.Thread(target=promote, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [v for v, r in results.items() if not isinstance(r, Exception) and r.promoted]
    losers = [v for v, r in results.items() if isinstance(r, PromotionConflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert stages(ws) == {1: "archived", 2: "production" if winners == [2] else "candidate", 3: "production" if winners == [3] else "candidate"}
    with registry(ws)() as s:
        promotions = [e for e in repo.audit_trail(s, NAME) if e.action == "promote"]
    assert [e.actor for e in promotions] == ["medgate-flow", f"op{winners[0]}"]


def test_rollback_restores_the_previous_production_and_serve_follows_it(cli, ws):
    add_version(ws, 0.90, production=True)
    add_version(ws, 0.92, production=True)
    assert stages(ws) == {1: "archived", 2: "production"}

    back = cli(ws, "models", "rollback", "--reason", "incident 42: drift at site B", "--actor", "oncall")
    assert back.exit_code == 0, back.output
    assert "production v2 -> v1" in back.output and "ct-lesion:bento1" in back.output
    assert stages(ws) == {1: "production", 2: "archived"}
    rows = audit_rows(cli, ws, "--model", NAME)[-2:]
    assert [(r["action"], r["version"], r["from_stage"], r["to_stage"]) for r in rows] == [
        ("rollback", 2, "production", "archived"), ("rollback", 1, "archived", "production")]
    assert all(r["actor"] == "oncall" and r["reason"] == "incident 42: drift at site B" for r in rows)

    # What `medgate serve` serves, and moves to at its next registry check (served for real in the slow test below).
    from cli.deploy import production_bento

    assert production_bento(registry(ws), NAME)[0] == "ct-lesion:bento1"

    again = cli(ws, "models", "rollback", "--to", "2", "--reason", "fixed")
    assert again.exit_code == 0 and stages(ws) == {1: "archived", 2: "production"}, again.output
    refused = cli(ws, "models", "rollback", "--to", "2", "--reason", "again")
    assert refused.exit_code == 1 and "only archived versions return" in refused.output


def test_show_and_compare(cli, ws):
    add_version(ws, 0.90, production=True)
    add_version(ws, 0.93, test_data="f" * 32)

    shown = cli(ws, "models", "show", "1")
    assert shown.exit_code == 0, shown.output
    card = shown.output
    assert card.startswith("# Model card: ct-lesion v1")
    for text in ("Stage: **production**", "## Intended use", "Not a medical device", "| auc | 0.9000 | 0.8500 – 0.9400 |",
                 "| data quality (Great Expectations) | passed |", "| value | auc | 0.9000 | >= | 0.8000 | pass |",
                 "| serving | serving_parity |", "| git commit | " + "c0ffee" * 6 + "abcd |", "| Bento | ct-lesion:bento1 |",
                 "| BentoML model | ct-lesion:model1 |", "| test data version (DVC hash of the prepared splits) | " + TEST_DATA,
                 "| params hash (sha256 of the run's params) |", "| evaluate.bootstrap_samples | 20 |",
                 "| medgate-flow | promote | candidate -> production | gate passed |", "Card files"):
        assert text in card, text
    facts = json.loads(cli(ws, "models", "show", "ct-lesion:1", "--json").output)
    assert facts["stage"] == "production" and facts["lineage"]["bento_tag"] == "ct-lesion:bento1"
    assert facts["gate"]["promote"] is True and facts["dataset"]["validation_success"] is True

    compared = cli(ws, "models", "compare", "1", "2")
    assert compared.exit_code == 0, compared.output
    text = compared.output
    assert "ct-lesion v1 vs ct-lesion v2" in text and "+0.0300" in text  # auc, B - A
    assert TEST_DATA[:12] in text and "f" * 12 in text and "differs" in text
    assert "different test data" in text
    assert "value auc >=" in text and "pass 0.9000" in text and "pass 0.9300" in text


def test_audit_prints_the_trail(cli, ws):
    add_version(ws, 0.90, production=True)
    add_version(ws, 0.95, production=True)
    add_version(ws, 0.90, name="other")
    out = cli(ws, "audit", "--model", NAME)
    assert out.exit_code == 0, out.output
    for text in ("register", "promote", "archive", "medgate-flow", "ct-lesion v1", "ct-lesion v2", "production -> archived", "gate passed"):
        assert text in out.output, text
    assert "other v1" not in out.output
    assert [(r["model"], r["version"], r["action"]) for r in audit_rows(cli, ws)] == [
        (NAME, 1, "register"), (NAME, 1, "promote"), (NAME, 2, "register"), (NAME, 1, "archive"), (NAME, 2, "promote"),
        ("other", 1, "register")]
    assert "no audit entries for nobody" in cli(ws, "audit", "--model", "nobody").output


# -- the champion re-evaluated on the candidate's test data --------------------------------------------


def _write_ingest(folder: Path, patients: int) -> None:
    """A tiny ingest output (manifest + pixel files) that prepare turns into splits: brighter images are lesions."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        label = "lesion" if p % 2 else "benign"
        for i in range(2):
            image = rng.integers(0, 120, (16, 16)).astype(np.uint8) + (100 if label == "lesion" else 0)
            rel = f"images/p{p:02d}-{i}.npy"
            np.save(folder / rel, image.astype(np.uint8))
            rows.append({"image_id": f"p{p:02d}-{i}", "patient_id": f"p{p:02d}", "label": label, "split": None, "path": rel,
                         "ndim": 2, "height": 16, "width": 16, "depth": 1, "channels": 1, "dtype": "uint8",
                         "intensity_min": float(image.min()), "intensity_max": float(image.max()),
                         "intensity_mean": float(image.mean()), "intensity_std": float(image.std()), "content_hash": f"h{p}-{i}"})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")


@pytest.fixture(scope="module")
def dvc_ws(tmp_path_factory):
    """A workspace whose prepare stage ran twice under DVC (data A, then data B), and a champion model
    that predicts 0.5 for everything (AUC 0.5 on any data) in the BentoML model store."""
    import torch

    from components.config import default_params
    from components.ml.models import ModelSpec, build_model, save_model
    from components.stages.package import save_to_model_store
    from components.data.prepared import read_dataset_info
    from components.ml.transforms import Preprocessing
    from flows.gate import prepared_data_version
    from flows.workspace import ensure_workspace, reproduce_stage

    ws = make_workspace(tmp_path_factory.mktemp("dvc") / "ws", GATE)
    ensure_workspace(ws)
    versions = []
    for patients in (30, 26):
        _write_ingest(ws / "data" / "ingest", patients)
        reproduce_stage(ws, "prepare")
        versions.append(prepared_data_version(ws))
    info = read_dataset_info(ws / "data" / "prepare")
    spec = ModelSpec(default_params(train={"model": {"width": 4}}).train.model, tuple(info["input_shape"]), tuple(info["class_names"]),
                     Preprocessing.from_dict(info["preprocessing"]))
    model = build_model(spec.model, spec.input_shape, len(spec.class_names))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    save_model(model, spec, ws / "champion")
    tags = {}
    for name in ("reeval", "unloadable"):
        tags[name] = save_to_model_store(ws / "champion", name, {"operating_threshold": 0.5})
    return ws, versions, tags


@pytest.fixture
def reeval_ws(dvc_ws, clean_env):
    from flows.settings import get_settings

    get_settings.cache_clear()
    yield dvc_ws
    get_settings.cache_clear()


def test_champion_tested_on_other_data_is_re_evaluated_on_the_candidates_test_data(cli, reeval_ws):
    from flows.gate import prepared_data_version

    ws, (data_a, data_b), tags = reeval_ws
    assert data_a != data_b and prepared_data_version(ws) == data_b  # data A is only in the DVC cache now
    model_tag, sha = tags["reeval"]
    # Stored champion AUC 0.95 (on data B) would refuse the candidate's 0.90; re-evaluated on data A it is 0.5.
    add_version(ws, 0.95, name="reeval", test_data=data_b, production=True, model_tag=model_tag, sha=sha)
    add_version(ws, 0.90, name="reeval", test_data=data_a)

    out = cli(ws, "models", "promote", "reeval:2", "--reason", "retrained on data A")
    assert out.exit_code == 0, out.output
    assert stages(ws, "reeval") == {1: "archived", 2: "production"}
    with registry(ws)() as s:
        decision = repo.latest_gate_decision(s, repo.get_version(s, "reeval", 2).id)
    assert decision.promote and decision.reason.startswith("manual gate requested by")
    assert "champion v1 re-evaluated on the candidate's test data" in decision.reason
    change = next(c for c in decision.checks if c["kind"] == "change")
    assert change["verdict"] == "pass" and change["value"] == pytest.approx(0.90 - 0.5)
    assert "champion 0.5000" in change["detail"] and "champion re-evaluated on this test data" in change["detail"]


def test_a_champion_that_cannot_be_evaluated_fails_the_change_checks_with_the_reason(cli, reeval_ws, tmp_path):
    from components.config import ChangeThreshold, GatePolicy, default_params
    from flows.gate import ChampionFacts, evaluate_gate

    ws, (data_a, data_b), tags = reeval_ws
    add_version(ws, 0.95, name="unloadable", test_data=data_b, production=True, model_tag="unloadable:gone", sha=tags["unloadable"][1])
    add_version(ws, 0.99, name="unloadable", test_data=data_a)

    out = cli(ws, "models", "promote", "unloadable:2", "--reason", "better")
    assert out.exit_code == 1, out.output
    assert "model unloadable:gone is not in the BentoML model store" in out.output
    assert stages(ws, "unloadable") == {1: "production", 2: "candidate"}

    # Test data that is neither the workspace's data/prepare nor in its DVC cache: the same failure, its own reason.
    champion = ChampionFacts(1, "x", 1, {"auc": 0.9}, data_b, tags["reeval"][0], tags["reeval"][1])
    policy = GatePolicy(changes={"auc": ChangeThreshold(direction="higher", absolute=-0.5, relative=-0.5)})
    outcome = evaluate_gate({"auc": 0.99}, "0" * 32, champion, policy, ws, default_params(evaluate={"bootstrap_samples": 5}).evaluate, tmp_path)
    assert not outcome.decision.promote and not outcome.champion_reevaluated
    changes = [c for c in outcome.decision.checks if c.kind == "change"]
    assert len(changes) == 2 and all(c.verdict == "fail" and "nor in its DVC cache" in c.detail for c in changes)


@pytest.mark.slow
def test_the_served_bento_follows_a_rollback(cli, reeval_ws):
    """Two real Bentos; `medgate serve` serves production and moves to the rolled-back version by itself."""
    import httpx

    from components.config import default_params
    from components.stages.package import build_bento
    from services.processes import find_free_port, wait_until_ready
    from services.settings import settings_for_model

    ws, (_, data_b), tags = reeval_ws
    (old_model, old_sha), (new_model, new_sha) = tags["reeval"], tags["unloadable"]
    for model_tag, sha in ((old_model, old_sha), (new_model, new_sha)):
        params = default_params()
        bento = build_bento(settings_for_model(model_tag, params.package, params.serve).to_dict(), labels={"model": "follow"})
        add_version(ws, 0.9, name="follow", test_data=data_b, production=True, model_tag=model_tag, bento_tag=bento, sha=sha)
    port = find_free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--model", "follow", "--port", str(port), "--poll", "1", "--workspace", str(ws)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until_ready(base, server, 120) is None
        assert httpx.get(f"{base}/metadata", timeout=10).json()["model_tag"] == new_model

        assert cli(ws, "models", "rollback", "--model", "follow", "--reason", "incident").exit_code == 0
        deadline, served = time.monotonic() + 90, new_model
        while served != old_model and time.monotonic() < deadline:
            time.sleep(1)
            served = httpx.get(f"{base}/metadata", timeout=10).json()["model_tag"]
        assert served == old_model
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
