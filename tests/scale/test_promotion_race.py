"""A run whose promotion finds that another workspace on the same registry promoted after its gate: the
registry refuses the stale decision, and the flow gates the candidate again against the new production model.
(test_shared_registry.py meets this race when its two runs overlap; here it happens at a chosen moment.)"""

from pathlib import Path

import pytest
from prefect import task
from sqlalchemy import select

from flows.workspace import create_workspace, update_params
from registry import repository as repo
from registry.db import make_session_factory
from registry.models import ModelVersion
from tests.integration.conftest import set_clean_env
from tests.scale.conftest import QUICK

pytestmark = pytest.mark.timeout(600)


def test_a_promotion_that_lost_the_race_is_gated_again(tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.pipeline as pipeline
    from flows.pipeline import training_flow
    from flows.settings import get_settings

    set_clean_env(monkeypatch)
    ws = create_workspace(tmp_path / "ws", QUICK)
    assert training_flow(workspace=str(ws))["production"]["version"] == 1
    sessions = make_session_factory(get_settings(ws).database_url)
    update_params(ws, {"train": {"learning_rate": 0.01}})  # a new candidate; the same test data
    real_gate, gated = pipeline.gate_task, []

    # Between this run's gate and its promotion, "another workspace" promotes its own version: the
    # moment is chosen by wrapping the real gate task; the registry, gate and flow are the real ones.
    @task(name="gate")
    def gate_then_another_workspace_promotes(*args):
        outcome = real_gate.fn(*args)
        if not gated:
            with sessions() as session:
                first = repo.get_champion(session, "ct-lesion")
                other = repo.register_model_version(
                    session, name="ct-lesion", run_id=first.run_id, dataset_version=first.dataset_version,
                    test_data_version=first.test_data_version, metrics={**first.metrics, "auc": 0.5}, artifact_sha256="cd" * 32,
                )
                session.commit()
                repo.set_package(session, other.id, first.model_tag, first.bento_tag)
                session.commit()
                repo.promote_version(session, other.id, actor="another-workspace", reason="promoted elsewhere", expected_champion_id=repo.ANY_CHAMPION)
        gated.append(outcome)
        return outcome

    monkeypatch.setattr(pipeline, "gate_task", gate_then_another_workspace_promotes)
    summary = training_flow(workspace=str(ws))

    assert summary["status"] == "completed" and len(gated) == 2, summary.get("error")
    with sessions() as session:
        stages = {mv.version: mv.stage for mv in session.scalars(select(ModelVersion))}
        candidate = repo.get_version(session, "ct-lesion", summary["model_version"])
        decision = repo.latest_gate_decision(session, candidate.id)
        other = next(mv for mv in repo.list_versions(session, "ct-lesion") if mv.artifact_sha256 == "cd" * 32)
        # Gated again against the version promoted elsewhere (the candidate's serving and privacy checks
        # kept), then promoted over it.
        assert decision.champion_version_id == other.id
        assert stages == {1: "archived", other.version: "archived", candidate.version: "production"}, stages
    assert {c["kind"] for c in summary["gate"]["checks"]} >= {"serving", "privacy", "change"}
    log = (Path(summary["summary_path"]).parent / "flow.log").read_text()
    assert "production changed since the decision" in log and f"gating ct-lesion v{candidate.version} again" in log
