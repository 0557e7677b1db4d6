"""Classification metrics shared by train (model selection), baseline and evaluate.

For two classes `class_names[1]` is the positive class: sensitivity is its recall, specificity
the other's. For more classes, sensitivity and specificity are macro averages one-vs-rest at the
argmax. Every function takes integer labels (N,) and class probabilities (N, classes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score, roc_curve


def score_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUC (one-vs-rest macro for multi-class); NaN when a class is absent."""
    try:
        if probs.shape[1] == 2:
            return float(roc_auc_score(labels, probs[:, 1]))
        return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=range(probs.shape[1])))
    except ValueError:
        return float("nan")


def choose_threshold(labels: np.ndarray, positive_probs: np.ndarray, operating_point: str, target_sensitivity: float) -> float:
    """Operating threshold on the positive-class probability: where Youden's J is highest
    (`operating_point` "youden"), or ("sensitivity") the highest score that reaches
    `target_sensitivity`, on the validation split. 0.5 when the labels hold one class only.

    Every threshold between that score and the next lower validation score gives the same
    validation result; the middle of that gap is taken, not its top edge (the lowest positive
    score counted in): on a small validation split the edge misses any test positive that scores
    just under it, and the middle leaves a margin on both sides.
    """
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, positive_probs, drop_intermediate=False)  # every distinct score
    thresholds = np.clip(thresholds, 0.0, 1.0)  # roc_curve's first threshold is +inf
    if operating_point == "sensitivity":
        chosen = int(np.flatnonzero(tpr >= target_sensitivity)[0])
    else:
        chosen = int(np.argmax(tpr - fpr))
    below = thresholds[chosen + 1] if chosen + 1 < len(thresholds) else thresholds[chosen]
    return float((thresholds[chosen] + below) / 2)


def predict_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Binary: positive when p(class 1) >= threshold; multi-class: argmax."""
    if probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1)


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Top-class confidence against accuracy in equal-width confidence bins (the non-empty ones)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {"bin": b, "confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()), "count": int((which == b).sum())}
        for b in range(bins)
        if (which == b).any()
    ]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    total = max(len(labels), 1)
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in reliability_bins(labels, probs, bins)))


def negative_log_likelihood(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()) if len(labels) else math.nan


def apply_temperature(probs: np.ndarray, temperature: float, offset: np.ndarray | None = None) -> np.ndarray:
    """softmax(logits / T + offset), from probabilities: log-probabilities differ from the logits by a
    per-image constant, which the softmax removes. `offset`: per class, e.g. a prior correction."""
    scaled = np.log(np.clip(probs, 1e-12, None)) / temperature
    if offset is not None:
        scaled = scaled + offset
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(labels: np.ndarray, probs: np.ndarray, offset: np.ndarray | None = None) -> float:
    """The temperature in [0.05, 20] minimising the negative log-likelihood of `labels` (Guo et al. 2017)
    under `apply_temperature(probs, T, offset)`."""
    if len(labels) == 0:
        return 1.0
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(labels, apply_temperature(probs, math.exp(log_t), offset)),
        bounds=(math.log(0.05), math.log(20.0)),
        method="bounded",
    )
    return float(math.exp(result.x))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float, bins: int = 10) -> dict[str, float]:
    """AUC, accuracy, sensitivity, specificity, F1, balanced accuracy and ECE at `threshold`, and the
    arg-max's accuracy without one (what MedMNIST and most papers call accuracy); NaN where undefined."""
    n_classes = probs.shape[1]
    predicted = predict_labels(probs, threshold)
    cm = confusion_matrix(labels, predicted, labels=range(n_classes)).astype(np.float64)
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / (tp + fn)
        tnr = tn / (tn + fp)
    if n_classes == 2:
        sensitivity, specificity = recall[1], tnr[1]
        f1 = f1_score(labels, predicted, pos_label=1, zero_division=0)
    else:
        sensitivity, specificity = np.nanmean(recall), np.nanmean(tnr)
        f1 = f1_score(labels, predicted, average="macro", zero_division=0)
    return {
        "auc": score_auc(labels, probs),
        "accuracy": float((predicted == labels).mean()) if len(labels) else math.nan,
        "sensitivity": float(sensitivity),
        "specificity": float(specificity),
        "f1": float(f1),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)) if len(labels) else math.nan,
        "argmax_accuracy": float((probs.argmax(axis=1) == labels).mean()) if len(labels) else math.nan,
        "ece": expected_calibration_error(labels, probs, bins),
    }


def bootstrap_ci(
    labels: np.ndarray, probs: np.ndarray, metric: Callable[[np.ndarray, np.ndarray], float], samples: int, seed: int
) -> tuple[float, float]:
    """Percentile 95% interval of `metric` over bootstrap resamples of the test images."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        idx = rng.integers(0, len(labels), len(labels))
        value = metric(labels[idx], probs[idx])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def paired_bootstrap_difference(
    labels: np.ndarray, probs: np.ndarray, other_probs: np.ndarray, samples: int, seed: int
) -> tuple[float, float]:
    """Percentile 95% interval of AUC(probs) - AUC(other_probs), both on the same resampled images."""
    return bootstrap_ci(
        labels,
        np.concatenate([probs, other_probs], axis=1),
        lambda y, both: score_auc(y, both[:, : probs.shape[1]]) - score_auc(y, both[:, probs.shape[1] :]),
        samples,
        seed,
    )
