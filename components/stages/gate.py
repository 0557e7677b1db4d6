"""gate: the promotion decision, a pure function of metrics, the champion's metrics and the policy.

The arithmetic (docs/gate.md has a worked example):
- No thresholds configured: nothing is promoted.
- Value thresholds: `lower <= value <= upper`, one check per bound.
- Change thresholds against the production model (the champion): `gain = candidate - champion`
  for metrics where higher is better, `champion - candidate` where lower is better; passes if
  `gain >= absolute`, and `gain / |champion| >= relative` (skipped, not failed, when the
  champion's value is 0).
- No champion: value thresholds only, and the decision says so.
- Subgroup floors: every computable subgroup's metric `>= floor`; subgroups where the metric is
  not computable are listed as skipped.
- A configured metric that was not computed (missing or NaN) fails.
- Retraining after drift (params.yaml ``drift.require_retraining``): once a dataset's drift
  exceeded its bound, a model trained on data recorded before that dataset fails the
  ``drift``/``retrained_since_drift`` check.
- Human sign-off (``require_approval``): a candidate the checks pass is not promoted but waits for
  an approver (`sign_off`); `approval_refusal` says who may not give it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Mapping

from components.config import GatePolicy

Verdict = Literal["pass", "fail", "skipped"]
#: What follows a gate decision: production, a person's sign-off first, or rejection.
SignOff = Literal["promote", "await_approval", "reject"]
#: The console roles that may sign off a candidate (registry.models.Role's other value is viewer).
APPROVER_ROLES = ("approver", "admin")


@dataclass(frozen=True)
class Check:
    kind: str  # value | change | subgroup | drift | serving | privacy
    metric: str
    value: float | None
    threshold: float | None
    comparison: str
    verdict: Verdict
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict != "fail"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    checks: tuple[Check, ...]
    reason: str
    champion_version: int | None = None

    def with_check(self, check: Check) -> GateDecision:
        """The decision after one more check (e.g. serving parity, known only after packaging)."""
        checks = (*self.checks, check)
        if check.verdict != "fail":
            return replace(self, checks=checks)
        return replace(self, checks=checks, promote=False, reason=f"{self.reason}; failed {check.kind} check {check.metric}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "champion_version": self.champion_version,
            "checks": [asdict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class RetrainingRequirement:
    """Drift exceeded its bound on `drifted_version`; a model must be trained on it or on later data.

    Dataset versions are content hashes: their order is the order in which the registry first
    recorded them (`*_seq`). `trained_seq` is None when the model's dataset was never recorded.
    """

    drifted_version: str
    drifted_seq: int
    trained_version: str
    trained_seq: int | None
    drift: str  # what exceeded which bound, e.g. "class_share 0.35 > 0.2"


def retraining_check(req: RetrainingRequirement) -> Check:
    """`drift retrained_since_drift`: 1 when the model was trained on the drifted dataset or a later one."""
    drifted = f"drifted dataset {req.drifted_version[:12]} (#{req.drifted_seq}: {req.drift})"
    if req.trained_seq is None:
        return Check("drift", "retrained_since_drift", None, 1.0, ">=", "fail",
                     f"training dataset {req.trained_version[:12]} is not in the registry; retraining on the {drifted} is required")
    ok = req.trained_seq >= req.drifted_seq
    detail = f"trained on dataset {req.trained_version[:12]} (#{req.trained_seq}), recorded {'at or after' if ok else 'before'} the {drifted}"
    if not ok:
        detail += "; retrain on it or newer data (drift.require_retraining)"
    return Check("drift", "retrained_since_drift", float(ok), 1.0, ">=", "pass" if ok else "fail", detail)


def _number(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    value = (metrics or {}).get(name)
    if value is None or not isinstance(value, (int, float)) or math.isnan(float(value)):
        return None
    return float(value)


def _bound(kind: str, metric: str, value: float | None, threshold: float, comparison: str) -> Check:
    if value is None:
        return Check(kind, metric, None, threshold, comparison, "fail", "metric was not computed")
    ok = value >= threshold if comparison == ">=" else value <= threshold
    return Check(kind, metric, value, threshold, comparison, "pass" if ok else "fail")


def decide_promotion(
    metrics: Mapping[str, Any],
    champion_metrics: Mapping[str, Any] | None,
    policy: GatePolicy,
    champion_version: int | None = None,
    retraining: RetrainingRequirement | None = None,
) -> GateDecision:
    """Every check of `policy` on the candidate's `metrics` (with `subgroups` as written by evaluate).

    Args:
        metrics: the candidate's test metrics.
        champion_metrics: the production model's metrics on the same test data, or None.
        policy: value bounds, change thresholds and subgroup floors.
        champion_version: recorded in the decision for traceability.
        retraining: where drift requires retraining, the drifted dataset and the candidate's own.
    """
    if not (policy.values or policy.changes or policy.subgroup_floors):
        return GateDecision(False, (), "no thresholds configured: nothing is promoted", champion_version)
    checks: list[Check] = []
    for metric, bound in sorted(policy.values.items()):
        value = _number(metrics, metric)
        if bound.lower is not None:
            checks.append(_bound("value", metric, value, bound.lower, ">="))
        if bound.upper is not None:
            checks.append(_bound("value", metric, value, bound.upper, "<="))

    if champion_metrics is not None:
        for metric, change in sorted(policy.changes.items()):
            checks.extend(_change_checks(metric, change, _number(metrics, metric), _number(champion_metrics, metric)))

    for metric, floor in sorted(policy.subgroup_floors.items()):
        for column, groups in sorted((metrics.get("subgroups") or {}).items()):
            for group, values in sorted(groups.items()):
                name = f"{metric}[{column}={group}]"
                if not values.get("computable", False):
                    checks.append(Check("subgroup", name, None, floor, ">=", "skipped", values.get("reason", "not computable")))
                else:
                    checks.append(_bound("subgroup", name, _number(values, metric), floor, ">="))

    if retraining is not None:
        checks.append(retraining_check(retraining))

    failed = [c for c in checks if c.verdict == "fail"]
    decided = [c for c in checks if c.verdict != "skipped"]
    prefix = "" if champion_metrics is not None else "no champion: value thresholds only; "
    if failed:
        reason = prefix + "refused: " + ", ".join(f"{c.metric} {c.comparison} {c.threshold}" for c in failed)
    elif not decided:
        reason = prefix + "refused: no check could be evaluated"
    else:
        reason = prefix + f"all {len(decided)} checks passed"
    return GateDecision(bool(decided) and not failed, tuple(checks), reason, champion_version)


def _change_checks(metric: str, change, candidate: float | None, champion: float | None) -> list[Check]:
    """The absolute and relative checks of one metric against the champion."""
    sign = 1.0 if change.direction == "higher" else -1.0
    checks = []
    for kind, threshold in (("absolute", change.absolute), ("relative", change.relative)):
        if threshold is None:
            continue
        comparison = f"gain {'' if kind == 'absolute' else '/ |champion| '}>="
        if candidate is None or champion is None:
            who = "candidate" if candidate is None else "champion"
            checks.append(Check("change", metric, None, threshold, comparison, "fail", f"{who} value was not computed"))
            continue
        gain = sign * (candidate - champion)
        detail = f"candidate {candidate:.4f}, champion {champion:.4f}"
        if kind == "relative":
            if champion == 0:
                checks.append(Check("change", metric, None, threshold, comparison, "skipped", "champion value is 0: relative change undefined"))
                continue
            gain = gain / abs(champion)
        checks.append(Check("change", metric, gain, threshold, comparison, "pass" if gain >= threshold else "fail", detail))
    return checks


def sign_off(decision: GateDecision, policy: GatePolicy) -> SignOff:
    """What happens to a candidate after `decision`: promoted, or, when the checks passed and the
    policy requires approval, left waiting for an approver; rejected when the checks refused it."""
    if not decision.promote:
        return "reject"
    return "await_approval" if policy.require_approval else "promote"


def approval_refusal(policy: GatePolicy, *, approver: str, role: str, triggered_by: str | None) -> str | None:
    """Why `approver` (of console `role`) may not sign off a candidate whose run `triggered_by`
    started, under `policy`; None when they may. Names compare case-insensitively."""
    if role not in APPROVER_ROLES:
        return f"{approver} is a {role}: only an approver or an admin signs off a candidate"
    if not policy.allow_self_approval and triggered_by and approver.casefold() == triggered_by.strip().casefold():
        return (f"{approver} triggered this candidate's run and may not approve it "
                "(the policy's allow_self_approval is false): another approver signs it off")
    return None
