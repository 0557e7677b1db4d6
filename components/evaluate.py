"""evaluate: scikit-learn metrics of the trained model on the test split.

The operating threshold is chosen on the validation split (never on test). For two classes,
`class_names[1]` is the positive class: sensitivity is its recall, specificity the other's.
For more classes, sensitivity and specificity are macro averages one-vs-rest at the argmax.
Writes `metrics.json` (flat numbers for `dvc metrics show`, plus `subgroups`) and
`predictions.csv` (per test image: true label, predicted label, class probabilities).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_curve

from components.artifacts import SUBGROUP_COLUMNS, EvalReport
from components.config import EvaluateConfig, load_params
from components.models import load_model
from components.prepare import load_split
from components.train import predict_probs, score_auc

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"


def choose_threshold(labels: np.ndarray, positive_probs: np.ndarray, cfg: EvaluateConfig) -> float:
    """Operating threshold on the positive-class probability: Youden's J, or the highest
    threshold that reaches the target sensitivity. 0.5 when the labels hold one class only."""
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, positive_probs)
    thresholds = np.clip(thresholds, 0.0, 1.0)  # roc_curve's first threshold is +inf
    if cfg.operating_point == "sensitivity":
        reaching = np.flatnonzero(tpr >= cfg.target_sensitivity)
        return float(thresholds[reaching[0]])
    return float(thresholds[int(np.argmax(tpr - fpr))])


def predict_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Binary: positive when p(class 1) >= threshold; multi-class: argmax."""
    if probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, accuracy, sensitivity, specificity, F1, balanced accuracy and ECE; NaN where undefined."""
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
        "ece": expected_calibration_error(labels, probs),
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


def subgroup_metrics(rows: pd.DataFrame, labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """The same metrics per value of each subgroup column the rows have.

    A subgroup holding one class only has no AUC, sensitivity or specificity: it is reported as
    not computable with the reason, never silently dropped.
    """
    result: dict[str, Any] = {}
    for column in SUBGROUP_COLUMNS:
        if column not in rows or (rows[column] == "").all():
            continue
        groups: dict[str, Any] = {}
        for value in sorted(rows[column].unique()):
            mask = (rows[column] == value).to_numpy()
            present = np.unique(labels[mask])
            if len(present) < 2:
                groups[value] = {"n": int(mask.sum()), "computable": False, "reason": "one class only in this subgroup"}
                continue
            groups[value] = {"n": int(mask.sum()), "computable": True, **classification_metrics(labels[mask], probs[mask], threshold)}
        result[column] = groups
    return result


def evaluate_model(data_dir: Path, model_dir: Path, cfg: EvaluateConfig, out_dir: Path) -> EvalReport:
    """Metrics of the model in `model_dir` on the test split of `data_dir`."""
    torch.set_num_threads(2)
    model, spec = load_model(model_dir)
    x_val, y_val, _ = load_split(data_dir, "val")
    x_test, y_test, rows = load_split(data_dir, "test")
    val_probs, test_probs = predict_probs(model, x_val), predict_probs(model, x_test)
    binary = len(spec.class_names) == 2
    threshold = choose_threshold(y_val, val_probs[:, 1], cfg) if binary else 0.5

    metrics: dict[str, Any] = classification_metrics(y_test, test_probs, threshold)
    for name, fn in {
        "auc": score_auc,
        "accuracy": lambda y, p: float((predict_labels(p, threshold) == y).mean()),
    }.items():
        metrics[f"{name}_ci_lower"], metrics[f"{name}_ci_upper"] = bootstrap_ci(y_test, test_probs, fn, cfg.bootstrap_samples, cfg.seed)
    metrics["val_auc"] = score_auc(y_val, val_probs)
    metrics["n_test"] = int(len(y_test))
    metrics["operating_threshold"] = threshold
    metrics["subgroups"] = subgroup_metrics(rows, y_test, test_probs, threshold)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=True))
    predicted = predict_labels(test_probs, threshold)
    table = rows[["image_id", "path", "label"]].assign(predicted=[spec.class_names[i] for i in predicted])
    for i, name in enumerate(spec.class_names):
        table[f"prob_{name}"] = test_probs[:, i]
    table.to_csv(out_dir / PREDICTIONS_FILE, index=False, float_format="%.8g")
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return EvalReport(out_dir / METRICS_FILE, flat, threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = evaluate_model(args.data, args.model, load_params(args.params).evaluate, args.out)
    shown = ", ".join(f"{k} {report.metrics[k]:.4f}" for k in ("auc", "accuracy", "sensitivity", "specificity"))
    print(f"evaluate: {shown}")


if __name__ == "__main__":
    main()
