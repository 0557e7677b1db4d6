"""Metrics against values computed by hand on small fixed arrays."""

import math

import numpy as np
import pandas as pd
import pytest

from components.config import EvaluateConfig
from components.evaluate import (
    bootstrap_ci,
    choose_threshold,
    classification_metrics,
    expected_calibration_error,
    subgroup_metrics,
)
from components.train import score_auc


def binary(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


def test_binary_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = binary([0.1, 0.4, 0.6, 0.3, 0.7, 0.9])
    m = classification_metrics(labels, probs, threshold=0.5)
    # predictions: 0 0 1 0 1 1 -> TP 2, FN 1, TN 2, FP 1
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 / 3)
    # pairs (pos, neg) ranked correctly: 0.3 beats 0.1 only; 0.7 and 0.9 beat all three -> 7/9
    assert m["auc"] == pytest.approx(7 / 9)


def test_multiclass_metrics_by_hand():
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8]])
    m = classification_metrics(labels, probs, threshold=0.5)
    assert m["accuracy"] == pytest.approx(0.75)
    # recall per class: 1, 1, 0.5 -> macro 5/6
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    # specificity per class: 1, 2/3 (one false positive of class 1 among 3 negatives), 1
    assert m["specificity"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert m["auc"] == pytest.approx(1.0)


def test_ece_by_hand():
    labels = np.array([1, 0])
    probs = binary([0.9, 0.7])  # confidences 0.9 (right) and 0.7 (wrong)
    # two bins of one sample: |1 - 0.9| / 2 + |0 - 0.7| / 2
    assert expected_calibration_error(labels, probs) == pytest.approx(0.05 + 0.35)


def test_youden_threshold_on_separable_data():
    labels = np.array([0, 0, 1, 1])
    threshold = choose_threshold(labels, np.array([0.1, 0.2, 0.8, 0.9]), EvaluateConfig())
    assert 0.2 < threshold <= 0.8


def test_target_sensitivity_threshold():
    labels = np.array([0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.5, 0.2, 0.6, 0.7, 0.9])
    threshold = choose_threshold(labels, p, EvaluateConfig(operating_point="sensitivity", target_sensitivity=1.0))
    assert threshold == pytest.approx(0.2)


def test_subgroup_with_one_class_is_not_computable():
    rows = pd.DataFrame({"site": ["a", "a", "a", "a", "b", "b"]})
    labels = np.array([0, 1, 0, 1, 1, 1])
    probs = binary([0.2, 0.8, 0.3, 0.6, 0.9, 0.4])
    groups = subgroup_metrics(rows, labels, probs, 0.5)["site"]
    assert groups["a"]["computable"] and groups["a"]["auc"] == pytest.approx(1.0)
    assert groups["b"] == {"n": 2, "computable": False, "reason": "one class only in this subgroup"}


def test_auc_undefined_with_one_class():
    assert math.isnan(score_auc(np.array([1, 1]), binary([0.2, 0.7])))


def test_bootstrap_interval_contains_point_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    p1 = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    probs = binary(p1)
    lo, hi = bootstrap_ci(labels, probs, score_auc, samples=200, seed=0)
    assert lo < score_auc(labels, probs) < hi
    assert 0.0 < hi - lo < 0.3
