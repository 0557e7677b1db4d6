"""Metrics against values computed by hand on small fixed arrays."""

import math

import numpy as np
import pandas as pd
import pytest

from components.config import default_params
from components.ml.metrics import (
    apply_temperature,
    bootstrap_ci,
    choose_threshold,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    paired_bootstrap_difference,
    reliability_bins,
    score_auc,
)
from components.stages.evaluate import subgroup_metrics


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


def test_argmax_accuracy_ignores_the_operating_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = binary([0.1, 0.4, 0.6, 0.3, 0.7, 0.9])
    m = classification_metrics(labels, probs, threshold=0.8)
    assert m["accuracy"] == pytest.approx(4 / 6)  # at 0.8: 0 0 0 0 0 1
    assert m["argmax_accuracy"] == pytest.approx(4 / 6)  # at 0.5: 0 0 1 0 1 1
    m = classification_metrics(labels, probs, threshold=0.65)
    assert m["accuracy"] == pytest.approx(5 / 6)  # 0 0 0 0 1 1
    assert m["argmax_accuracy"] == pytest.approx(4 / 6)


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
    threshold = choose_threshold(labels, np.array([0.1, 0.2, 0.8, 0.9]), "youden", 0.9)
    assert threshold == pytest.approx(0.5), "the middle of the gap between the classes, not its edge at 0.8"
    # Ties and an imperfect split: J is highest at 0.6 (tpr 1, fpr 1/3); the next lower score is 0.3.
    tied = choose_threshold(np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.3, 0.6, 0.6, 0.7, 0.9]), "youden", 0.9)
    assert tied == pytest.approx(0.45)


def test_target_sensitivity_threshold():
    labels = np.array([0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.5, 0.2, 0.6, 0.7, 0.9])
    threshold = choose_threshold(labels, p, "sensitivity", 1.0)
    assert threshold == pytest.approx(0.15)  # 0.2 reaches it; midway to the next lower score, 0.1


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


def test_reliability_bins_by_hand():
    labels = np.array([1, 1, 0, 0])
    probs = binary([0.95, 0.85, 0.9, 0.3])  # top-class confidences 0.95, 0.85, 0.9 (wrong), 0.7 (right)
    bins = reliability_bins(labels, probs, bins=10)
    assert [(b["bin"], b["count"]) for b in bins] == [(6, 1), (8, 2), (9, 1)]
    assert bins[1]["confidence"] == pytest.approx(0.875) and bins[1]["accuracy"] == pytest.approx(0.5)


def test_temperature_by_hand_and_fitted_on_overconfident_predictions():
    # T = 2 takes square roots before renormalising: sqrt(0.8) / (sqrt(0.8) + sqrt(0.2)) = 2/3
    assert apply_temperature(np.array([[0.2, 0.8]]), 2.0)[0, 1] == pytest.approx(2 / 3)
    assert np.allclose(apply_temperature(binary([0.3, 0.9]), 1.0), binary([0.3, 0.9]))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    honest = np.where(labels == 1, 0.7, 0.3)
    overconfident = apply_temperature(binary(np.where(rng.random(400) < 0.7, honest, 1 - honest)), 0.25)
    temperature = fit_temperature(labels, overconfident)
    assert temperature > 2  # the cure for over-confidence is a temperature above 1
    assert negative_log_likelihood(labels, apply_temperature(overconfident, temperature)) < negative_log_likelihood(labels, overconfident)


def test_paired_bootstrap_of_identical_models_is_zero():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 100)
    probs = binary(rng.random(100))
    assert paired_bootstrap_difference(labels, probs, probs, samples=50, seed=0) == (0.0, 0.0)
    better = binary(np.clip(labels * 0.5 + rng.random(100) * 0.5, 0, 1))
    lower, upper = paired_bootstrap_difference(labels, better, probs, samples=200, seed=0)
    assert 0 < lower < upper


def test_glcm_texture_by_hand():
    from components.stages.baseline import glcm_features

    q = np.array([[[0, 0, 1], [1, 1, 0]]])
    # Distance 1, four directions, symmetric: pairs (0,0) 4, (0,1) 7, (1,0) 7, (1,1) 4 of 22.
    contrast, dissimilarity, homogeneity, energy, entropy, correlation = glcm_features(q, levels=2, distances=(1,))[0]
    p = np.array([4, 7, 7, 4]) / 22
    assert contrast == pytest.approx(14 / 22) and dissimilarity == pytest.approx(14 / 22)
    assert homogeneity == pytest.approx(8 / 22 + 14 / 22 / 2)
    assert energy == pytest.approx((p**2).sum())
    assert entropy == pytest.approx(-(p * np.log2(p)).sum())
    assert correlation == pytest.approx(-3 / 11)  # means 0.5, sds 0.5, covariance (8 - 14) / 22 / 4


def test_baseline_features_of_2d_and_3d_images():
    from components.stages.baseline import extract_features

    rng = np.random.default_rng(0)
    flat = extract_features(rng.random((3, 1, 12, 12)).astype(np.float32), default_params().baseline)
    volume = extract_features(rng.random((2, 1, 4, 12, 12)).astype(np.float32), default_params().baseline)
    assert flat.shape[1] == volume.shape[1] and np.isfinite(flat).all() and np.isfinite(volume).all()
    constant = extract_features(np.zeros((1, 1, 8, 8), np.float32), default_params().baseline)
    assert np.isfinite(constant).all()  # a blank image has no variance, yet defined features
