"""Promotion: the training flow's `promote` task, `promote_manually` (`medgate models promote`) and
`sign_off_candidate` (`medgate models approve|reject` and the review console).

Both of the first record the gate's decision (flows.gate) on a candidate and make it production when
the gate passed, or, where the policy requires approval, leave it awaiting an approver
(`components.stages.gate.sign_off`); the flow rejects a candidate the gate refused, an operator may
override the refusal. An approver's sign-off promotes through the registry's `promote_version`, the
automatic promotion's own path, with the gate decision's champion check.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.orm import Session

from components.config import EvaluateConfig, Params, merged
from components.stages.gate import Check, approval_refusal, sign_off
from flows.drift import read_retraining
from flows.gate import GateOutcome, evaluate_gate, read_champion
from flows.recording import RunRecorder, json_safe
from registry import repository as repo
from registry.errors import InvalidTransition, NotFoundError
from registry.models import ModelVersion, Stage
from registry.users import get_user


# The recorder holds the registry's session factory: nothing to hash into a cache key.
@task(name="promote", cache_policy=NO_CACHE)
def promote_task(record: RunRecorder, outcome: GateOutcome, bento_tag: str | None) -> None:
    """The candidate promoted when the gate passed, else rejected; the decision and its model card recorded."""
    record.decided(outcome, bento_tag)


def describe_check(check: dict[str, Any] | Check) -> str:
    """One line for a check: `value auc 0.8123 >= 0.85: fail (detail)`."""
    c = check if isinstance(check, dict) else asdict(check)
    value = "n/a" if c.get("value") is None else f"{c['value']:.4f}"
    detail = f" ({c['detail']})" if c.get("detail") else ""
    return f"{c['kind']} {c['metric']} {value} {c['comparison']} {c['threshold']}: {c['verdict']}{detail}"


# -- manual promotion ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ManualPromotion:
    """What `promote_manually` did: the gate's outcome, and whether production changed."""

    name: str
    version: int
    outcome: GateOutcome
    promoted: bool
    overridden: bool
    audit_reason: str | None
    bento_tag: str | None
    awaiting_approval: bool = False

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.outcome.decision.checks if c.verdict == "fail"]


def promote_manually(
    sessions: Callable[[], Session],
    workspace: Path,
    params: Params,
    name: str,
    version: int,
    *,
    reason: str,
    actor: str,
    override: bool = False,
) -> ManualPromotion:
    """Run the gate on version `version` of `name` against the current champion and promote it if
    the gate passes, or if `override` is set (the audit row then says OVERRIDE and lists the failing
    checks). The decision is recorded either way; a refusal without override changes no stage.
    Where the model name's policy requires approval, a version the gate passes waits for an approver
    instead (`sign_off_candidate`), and an override is refused.

    The version's serving-parity check from its last recorded decision, if any, is carried over:
    a Bento that failed it does not return to production without an override.

    Raises:
        NotFoundError: no such version.
        InvalidTransition: the version is production already, was rejected, or has no Bento.
        registry.PromotionConflict: production changed while the gate ran.
    """
    if not reason.strip():
        raise ValueError("a manual promotion needs a reason")
    policy = params.gate.for_model(name)
    if override and policy.require_approval:
        raise InvalidTransition(f"{name} requires an approver's sign-off (gate require_approval): an override cannot replace it")
    with sessions() as session:
        mv = repo.get_version(session, name, version)
        if mv is None:
            raise NotFoundError(f"{name} has no version {version}")
        label = f"{name} v{version}"
        if mv.stage == Stage.PRODUCTION:
            raise InvalidTransition(f"{label} is already production")
        if mv.stage == Stage.REJECTED:
            raise InvalidTransition(f"{label} was rejected; rejected versions never return (train a new version)")
        if not mv.bento_tag:
            raise InvalidTransition(f"{label} has no Bento (it was never packaged); production must be servable")
        candidate_id, metrics, test_data = mv.id, dict(mv.metrics or {}), mv.test_data_version
        evaluate_cfg = _evaluate_config(mv.run.params if mv.run is not None else None, params)
        previous = repo.latest_gate_decision(session, mv.id)
        serving = [c for c in (previous.checks if previous is not None else []) if c.get("kind") == "serving"]
        champion = read_champion(session, name)
        retraining = read_retraining(session, name, params.drift, mv.dataset_version)
        bento_tag = mv.bento_tag

    with tempfile.TemporaryDirectory(prefix="medgate-gate-") as scratch:
        outcome = evaluate_gate(
            metrics, test_data, champion, policy, workspace, evaluate_cfg, Path(scratch), retraining
        )
    carried = "from the last recorded decision"
    for check in serving[-1:]:
        detail = check.get("detail") or ""
        outcome = outcome.with_check(Check(**{**check, "detail": detail if detail.startswith(carried) else f"{carried}; {detail}"}))
    decision = outcome.decision
    failed = [c for c in decision.checks if c.verdict == "fail"]

    awaiting = sign_off(decision, policy) == "await_approval"
    if decision.promote and not awaiting:
        audit_reason: str | None = f"manual promotion: {reason}; gate passed: {decision.reason}"
    elif override and not decision.promote:
        shown = "; ".join(describe_check(c) for c in failed) or decision.reason
        audit_reason = f"OVERRIDE of a refused gate: {reason}; failing checks: {shown}"
    else:
        audit_reason = None
    with sessions() as session:
        repo.record_gate_decision(
            session, model_version_id=candidate_id, promote=decision.promote, checks=json_safe(decision.to_dict()["checks"]),
            champion_version_id=outcome.champion_id, reason=f"manual gate requested by {actor}: {decision.reason}",
        )
        session.commit()
        if awaiting:
            repo.request_approval(session, candidate_id, actor=actor, reason=f"manual promotion: {reason}; gate passed: {decision.reason}")
        elif audit_reason is not None:
            repo.promote_version(
                session, candidate_id, actor=actor, reason=audit_reason, expected_champion_id=outcome.champion_id
            )
    return ManualPromotion(
        name, version, outcome, audit_reason is not None, override and not decision.promote, audit_reason, bento_tag, awaiting
    )


class SignOffRefused(PermissionError):
    """The person may not sign off this candidate (their role, or the self-approval rule); nothing changed."""


def sign_off_candidate(
    sessions: Callable[[], Session], params: Params, name: str, version: int, *, approve: bool, actor: str, reason: str
) -> ModelVersion:
    """Approve (promote) or reject version `version` of `name`, which awaits approval, as console user `actor`.

    Who may is `components.stages.gate.approval_refusal` under the name's policy in `params`: an
    approver or admin, and for approval not the person who triggered the version's run unless the
    policy allows it (anyone with the role may reject). The check, the approval's decision and the
    stage change with its audit rows are one registry transaction (`repository.decide_approval`).

    Raises:
        SignOffRefused: `actor` is no active user, or the policy refuses them.
        NotFoundError: no such version.
        InvalidTransition: the version does not await approval.
        registry.PromotionConflict: production changed since the version's gate decision (re-run the gate:
            `medgate models promote`, which leaves it awaiting approval again).
    """
    with sessions() as session:
        mv = repo.get_version(session, name, version)
        if mv is None:
            raise NotFoundError(f"{name} has no version {version}")
        user = get_user(session, actor)
        if user is None:
            raise SignOffRefused(f"{actor!r} is not a console user: approvers are added with `medgate users add`")
        triggered_by = mv.run.triggered_by if approve and mv.run is not None else None
        refusal = approval_refusal(params.gate.for_model(name), approver=user.name, role=user.role, triggered_by=triggered_by)
        if refusal is not None:
            raise SignOffRefused(refusal)
        return repo.decide_approval(session, mv.id, approve=approve, actor=user.name, reason=reason)


def _evaluate_config(run_params: dict[str, Any] | None, params: Params) -> EvaluateConfig:
    """The evaluation settings the candidate was evaluated with (its run's params; keys it predates
    from params.yaml), else params.yaml's."""
    try:
        return EvaluateConfig.model_validate(merged(params.evaluate.model_dump(), (run_params or {})["evaluate"]))
    except (KeyError, ValueError, AttributeError):
        return params.evaluate
