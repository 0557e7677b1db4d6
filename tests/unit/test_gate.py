"""decide_promotion as a table: every rule of docs/gate.md once."""

import math

import pytest

from components.config import Bound, ChangeThreshold, GatePolicy
from components.stages.gate import Check, RetrainingRequirement, decide_promotion

AUC_POLICY = GatePolicy(values={"auc": Bound(lower=0.8)}, changes={"auc": ChangeThreshold(direction="higher", absolute=-0.02, relative=-0.05)})


def verdicts(decision):
    return [(c.kind, c.metric, c.verdict) for c in decision.checks]


@pytest.mark.parametrize(
    "case, metrics, champion, policy, promote, expected",
    [
        ("better", {"auc": 0.92}, {"auc": 0.90}, AUC_POLICY, True,
         [("value", "auc", "pass"), ("change", "auc", "pass"), ("change", "auc", "pass")]),
        ("worse beyond tolerance", {"auc": 0.85}, {"auc": 0.90}, AUC_POLICY, False,
         [("value", "auc", "pass"), ("change", "auc", "fail"), ("change", "auc", "fail")]),
        ("tie", {"auc": 0.90}, {"auc": 0.90}, GatePolicy(changes={"auc": ChangeThreshold(direction="higher", absolute=0.0)}), True,
         [("change", "auc", "pass")]),
        ("tie needs strict gain", {"auc": 0.90}, {"auc": 0.90}, GatePolicy(changes={"auc": ChangeThreshold(direction="higher", absolute=0.001)}), False,
         [("change", "auc", "fail")]),
        ("no champion: values only", {"auc": 0.85}, None, AUC_POLICY, True, [("value", "auc", "pass")]),
        ("below value threshold", {"auc": 0.75}, None, AUC_POLICY, False, [("value", "auc", "fail")]),
        ("missing metric fails", {"accuracy": 0.9}, None, AUC_POLICY, False, [("value", "auc", "fail")]),
        ("NaN metric fails", {"auc": math.nan}, None, AUC_POLICY, False, [("value", "auc", "fail")]),
        ("zero baseline skips relative", {"auc": 0.9}, {"auc": 0.0}, AUC_POLICY, True,
         [("value", "auc", "pass"), ("change", "auc", "pass"), ("change", "auc", "skipped")]),
        ("balanced accuracy, not accuracy", {"accuracy": 0.9, "balanced_accuracy": 0.6}, None,
         GatePolicy(values={"balanced_accuracy": Bound(lower=0.7)}), False, [("value", "balanced_accuracy", "fail")]),
        ("upper-bound metric", {"ece": 0.12}, None, GatePolicy(values={"ece": Bound(upper=0.1)}), False, [("value", "ece", "fail")]),
        ("lower-is-better change", {"ece": 0.05}, {"ece": 0.08}, GatePolicy(changes={"ece": ChangeThreshold(direction="lower", absolute=0.0)}), True,
         [("change", "ece", "pass")]),
        ("champion lacks the metric", {"auc": 0.9}, {"accuracy": 0.9}, GatePolicy(changes={"auc": ChangeThreshold(direction="higher", absolute=0.0)}), False,
         [("change", "auc", "fail")]),
    ],
)
def test_decision_table(case, metrics, champion, policy, promote, expected):
    decision = decide_promotion(metrics, champion, policy)
    assert decision.promote is promote, case
    assert verdicts(decision) == expected, case


def test_no_thresholds_promotes_nothing():
    decision = decide_promotion({"auc": 0.99}, None, GatePolicy())
    assert not decision.promote and decision.checks == ()
    assert "no thresholds" in decision.reason


def test_no_champion_says_so():
    assert "no champion" in decide_promotion({"auc": 0.9}, None, AUC_POLICY).reason


def test_change_arithmetic_values():
    decision = decide_promotion({"auc": 0.88}, {"auc": 0.80}, GatePolicy(changes={"auc": ChangeThreshold(direction="higher", absolute=0.05, relative=0.05)}))
    absolute, relative = decision.checks
    assert absolute.value == pytest.approx(0.08) and absolute.verdict == "pass"
    assert relative.value == pytest.approx(0.1) and relative.verdict == "pass"


def test_subgroup_floor():
    metrics = {
        "auc": 0.9,
        "subgroups": {
            "site": {
                "site-a": {"computable": True, "auc": 0.95, "n": 20},
                "site-b": {"computable": True, "auc": 0.70, "n": 20},
                "site-c": {"computable": False, "reason": "one class only in this subgroup", "n": 3},
            }
        },
    }
    decision = decide_promotion(metrics, None, GatePolicy(subgroup_floors={"auc": 0.8}))
    assert not decision.promote
    assert verdicts(decision) == [
        ("subgroup", "auc[site=site-a]", "pass"),
        ("subgroup", "auc[site=site-b]", "fail"),
        ("subgroup", "auc[site=site-c]", "skipped"),
    ]


def test_serving_check_can_only_refuse():
    passed = decide_promotion({"auc": 0.9}, None, AUC_POLICY)
    assert passed.with_check(Check("serving", "serving_parity", 0.0, 1e-4, "<=", "pass")).promote
    refused = passed.with_check(Check("serving", "serving_parity", 0.3, 1e-4, "<=", "fail"))
    assert not refused.promote and "serving_parity" in refused.reason


def _after_drift(trained_seq):
    """Drift exceeded its bound on dataset #2; the candidate was trained on dataset #`trained_seq`."""
    return RetrainingRequirement("d2" * 32, 2, "tr" * 32, trained_seq, "class_share 0.35 > 0.2")


@pytest.mark.parametrize(
    "case, retraining, promote, value",
    [
        ("trained on the drifted dataset", _after_drift(2), True, 1.0),
        ("trained on later data", _after_drift(5), True, 1.0),
        ("stale: trained on older data", _after_drift(1), False, 0.0),
        ("training data never recorded", _after_drift(None), False, None),
    ],
)
def test_retraining_required_after_drift(case, retraining, promote, value):
    decision = decide_promotion({"auc": 0.92}, {"auc": 0.90}, AUC_POLICY, 1, retraining)
    assert decision.promote is promote, case
    drift = decision.checks[-1]
    assert (drift.kind, drift.metric, drift.value, drift.threshold) == ("drift", "retrained_since_drift", value, 1.0), case
    assert verdicts(decision)[:-1] == [("value", "auc", "pass"), ("change", "auc", "pass"), ("change", "auc", "pass")], case
    assert "d2d2d2d2d2d2 (#2: class_share 0.35 > 0.2)" in drift.detail, case
    if not promote:
        assert "retrained_since_drift >= 1.0" in decision.reason, case
        assert ("retrain on it or newer data" if value == 0.0 else "is not in the registry") in drift.detail, case


def test_no_drift_requirement_adds_no_check():
    assert [c.kind for c in decide_promotion({"auc": 0.92}, {"auc": 0.90}, AUC_POLICY, 1).checks] == ["value", "change", "change"]
