"""Human sign-off in the gate path: the policy (components.stages.gate), the recorder's decision
(flows.recording), the approver's sign-off (flows.promotion) and the registry's guards, on SQLite
and, where it answers, PostgreSQL (test_registry's `db_url`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from components.config import GatePolicy, default_params
from components.stages.gate import Check, GateDecision, approval_refusal, sign_off
from flows.gate import GateOutcome
from flows.promotion import SignOffRefused, sign_off_candidate
from flows.recording import RunRecorder
from flows.settings import Settings
from registry import db, repository as repo, users
from registry.errors import InvalidTransition, PromotionConflict
from registry.models import Approval, ApprovalStatus, Stage
from tests.unit.test_registry import db_url, postgres_skip_reason  # noqa: F401 - fixtures

SHA = "cd" * 32
PASSED = GateDecision(True, (Check("value", "auc", 0.9, 0.85, ">=", "pass"),), "all 1 checks passed")
REFUSED = GateDecision(False, (Check("value", "auc", 0.8, 0.85, ">=", "fail"),), "refused: auc >= 0.85")


@pytest.mark.parametrize(
    ("decision", "require", "expected"),
    [(PASSED, False, "promote"), (PASSED, True, "await_approval"), (REFUSED, False, "reject"), (REFUSED, True, "reject")],
)
def test_sign_off_follows_the_decision_and_the_policy(decision: GateDecision, require: bool, expected: str) -> None:
    assert sign_off(decision, GatePolicy(require_approval=require)) == expected


def test_who_may_approve() -> None:
    strict, lenient = GatePolicy(require_approval=True), GatePolicy(require_approval=True, allow_self_approval=True)
    assert "only an approver" in approval_refusal(strict, approver="vic", role="viewer", triggered_by=None)
    assert "triggered" in approval_refusal(strict, approver="Alice", role="approver", triggered_by="alice ")
    assert approval_refusal(lenient, approver="alice", role="approver", triggered_by="alice") is None
    assert approval_refusal(strict, approver="bob", role="approver", triggered_by="alice") is None
    assert approval_refusal(strict, approver="root", role="admin", triggered_by=None) is None


@pytest.fixture
def sessions(db_url: str):  # noqa: F811 - the imported fixture
    db.upgrade_database(db_url)
    made = db.make_session_factory(db_url)
    with made() as s:
        users.add_user(s, "alice", "approver", "hash-a", actor="test")
        users.add_user(s, "bob", "approver", "hash-b", actor="test")
        users.add_user(s, "vic", "viewer", "hash-v", actor="test")
        s.commit()
    yield made
    made.kw["bind"].dispose()


def _candidate(sessions, name: str = "ct-lesion", triggered_by: str = "alice", champion: int | None = None) -> tuple[int, int]:
    """A registered, gate-passed candidate of a run `triggered_by` started: (run id, version id)."""
    with sessions() as s:
        run = repo.start_run(s, dataset_id=None, params={}, git_commit=None, prefect_flow_run_id=None,
                             trigger="manual", triggered_by=triggered_by)
        mv = repo.register_model_version(s, name=name, run_id=run.id, dataset_version="d1", test_data_version="t1",
                                         metrics={"auc": 0.9}, artifact_sha256=SHA, model_tag=f"{name}:m", bento_tag=f"{name}:b")
        repo.record_gate_decision(s, model_version_id=mv.id, promote=True, checks=[], champion_version_id=champion, reason="ok")
        s.commit()
        return run.id, mv.id


def _awaiting(sessions, **kw) -> int:
    """A candidate (`_candidate`) that awaits approval: its version id."""
    _, version_id = _candidate(sessions, **kw)
    with sessions() as s:
        repo.request_approval(s, version_id, actor="medgate-flow", reason="passed")
    return version_id


def _params(require: bool = True, self_ok: bool = False):
    policy = {"require_approval": require, "allow_self_approval": self_ok}
    return default_params(gate={"default": policy})


def test_the_recorder_leaves_a_passed_candidate_awaiting_approval(sessions, tmp_path: Path) -> None:
    params = _params()
    run_id, version_id = _candidate(sessions)
    with sessions() as s:
        number = s.get_one(repo.ModelVersion, version_id).version
    record = RunRecorder(Settings(tmp_path, "sqlite://"), params, "ct-lesion", sessions, run_id, {"run_id": "r1"})
    record.version_id, record.model_version = version_id, number
    record.decided(GateOutcome(PASSED, None), "ct-lesion:b")
    with sessions() as s:
        assert s.get_one(repo.ModelVersion, version_id).stage == Stage.CANDIDATE
        assert repo.get_approval(s, version_id).status == ApprovalStatus.PENDING
        assert repo.get_champion(s, "ct-lesion") is None
        assert repo.audit_trail(s, "ct-lesion")[-1].action == "approval-request"
    assert record.summary["awaiting_approval"] == number
    assert "Stage: **awaiting_approval**" in Path(record.summary["model_card"]).read_text()
    with sessions() as s, pytest.raises(InvalidTransition, match="awaits approval"):
        repo.promote_version(s, version_id, actor="medgate-flow", reason="bypass")


def test_an_approver_promotes_through_the_registry_and_the_triggerer_may_not(sessions) -> None:
    version_id = _awaiting(sessions, triggered_by="alice")
    for who, why in (("alice", "triggered"), ("vic", "only an approver"), ("mallory", "not a console user")):
        with pytest.raises(SignOffRefused, match=why):
            sign_off_candidate(sessions, _params(), "ct-lesion", 1, approve=True, actor=who, reason="looks good")
    promoted = sign_off_candidate(sessions, _params(), "ct-lesion", 1, approve=True, actor="bob", reason="looks good")
    assert promoted.stage == Stage.PRODUCTION
    with sessions() as s:
        approval = repo.get_approval(s, version_id)
        assert (approval.status, approval.decided_by) == (ApprovalStatus.APPROVED, "bob")
        last = repo.audit_trail(s, "ct-lesion")[-1]
        assert (last.actor, last.action, last.to_stage, last.reason) == ("bob", "promote", "production", "approved: looks good")
        # a decided approval never changes, whatever writes to the table
        with pytest.raises(IntegrityError, match="never changes|not allowed"):
            s.execute(text("UPDATE approvals SET status = 'rejected'"))
    with pytest.raises(InvalidTransition, match="does not await approval"):
        sign_off_candidate(sessions, _params(), "ct-lesion", 1, approve=False, actor="bob", reason="again")


def test_self_approval_where_the_policy_allows_it_and_rejection_by_the_triggerer(sessions) -> None:
    _awaiting(sessions, triggered_by="alice")
    second = _awaiting(sessions, triggered_by="alice")
    sign_off_candidate(sessions, _params(self_ok=True), "ct-lesion", 1, approve=True, actor="alice", reason="mine, allowed")
    rejected = sign_off_candidate(sessions, _params(), "ct-lesion", 2, approve=False, actor="alice", reason="artefacts in site B")
    assert rejected.stage == Stage.REJECTED
    with sessions() as s:
        assert repo.get_approval(s, second).reason == "artefacts in site B"
        assert repo.audit_trail(s, "ct-lesion")[-1].reason == "approval refused: artefacts in site B"


def test_a_failed_promotion_leaves_the_approval_pending(sessions) -> None:
    """The gate compared the candidate with no champion; one appeared since: nothing of the sign-off is kept."""
    _, other = _candidate(sessions)
    waiting = _awaiting(sessions)
    with sessions() as s:
        repo.promote_version(s, other, actor="medgate-flow", reason="ok")
    with pytest.raises(PromotionConflict):
        sign_off_candidate(sessions, _params(), "ct-lesion", 2, approve=True, actor="bob", reason="ok")
    with sessions() as s:
        assert repo.get_approval(s, waiting).status == ApprovalStatus.PENDING
        assert s.get_one(repo.ModelVersion, waiting).stage == Stage.CANDIDATE
        assert s.query(Approval).count() == 1


def test_users_are_removed_not_deleted_and_audited(sessions) -> None:
    with sessions() as s:
        users.remove_user(s, "vic", actor="root")
        s.commit()
        assert users.get_user(s, "vic") is None and users.count_users(s) == 2
        with pytest.raises(InvalidTransition, match="exists"):
            users.add_user(s, "bob", "admin", "h", actor="root")
        users.add_user(s, "vic", "admin", "new-hash", actor="root")
        s.commit()
        assert users.get_user(s, "vic").role == "admin"
        assert [e.action for e in repo.audit_trail(s, "")][-2:] == ["user-remove", "user-add"]
        with pytest.raises(IntegrityError, match="never deleted|not allowed"):
            s.execute(text("DELETE FROM users"))
