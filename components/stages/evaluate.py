"""evaluate: scikit-learn metrics of the trained model on the test split.

The operating threshold is chosen on the validation split (never on test). For two classes,
`class_names[1]` is the positive class: sensitivity is its recall, specificity the other's.
For more classes, sensitivity and specificity are macro averages one-vs-rest at the argmax.
Writes `metrics.json` (flat numbers for `dvc metrics show`, plus `subgroups`),
`predictions.csv` (per test image: true label, predicted label, class probabilities, exactly what
the served model answers) and `plots/` (ROC, calibration and confusion data for `dvc plots`).

Calibration: `ece` is that of the model as served. With `temperature_scaling`, a temperature is
fitted on the validation split and `ece_scaled`/`nll_scaled` say what it would give; it changes
neither AUC nor the predicted labels (the threshold is chosen on the same scale).
How the probabilities are made (`cfg.tta_flip_axes`, `cfg.calibrate_prediction`, `cfg.prior_correction`; ensemble members from
the model): components.ml.predictor, as the service makes them; metrics.json's `prediction` records
it for packaging. Accuracy and balanced accuracy are always both reported, and `argmax_accuracy`
(the arg-max class, no threshold: the papers' accuracy; for two classes `accuracy` is at the operating point).
Against the classical baseline (components.stages.baseline, same test images): `baseline_<metric>`,
`auc_minus_baseline` and its paired bootstrap 95% interval. Where every patient's several images
or clips share a label: `patient_auc` and `patient_accuracy` on the mean of each patient's scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve
from torch import nn

from components.config import EvaluateConfig, load_params, stage_arguments
from components.data.artifacts import METRICS_FILE, PLOTS_DIR, PREDICTIONS_FILE, EvalReport
from components.data.manifest import SUBGROUP_COLUMNS
from components.data.prepared import load_split
from components.ml.audio import per_recording
from components.ml.metrics import (
    apply_temperature,
    bootstrap_ci,
    choose_threshold,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    paired_bootstrap_difference,
    predict_labels,
    reliability_bins,
    score_auc,
)
from components.ml.models import ModelSpec, load_networks, spec_predictor
from components.ml.predictor import correct_probs
from components.ml.runtime import keep_freed_memory, predict_probs, set_threads
from components.ml.video import patient_metrics


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


def compare_with_baseline(
    baseline_dir: Path, rows: pd.DataFrame, labels: np.ndarray, probs: np.ndarray, metrics: dict[str, Any], cfg: EvaluateConfig
) -> dict[str, Any]:
    """`baseline_<metric>` for the classical baseline, and the network's margin over it."""

    baseline = json.loads((baseline_dir / METRICS_FILE).read_text())
    predictions = pd.read_csv(baseline_dir / PREDICTIONS_FILE, dtype={"image_id": str}).set_index("image_id")
    if set(predictions.index) != set(rows["image_id"]):
        raise ValueError(f"{baseline_dir / PREDICTIONS_FILE}: the baseline was not measured on this test split")
    prob_columns = [c for c in predictions.columns if c.startswith("prob_")]
    baseline_probs = predictions.loc[rows["image_id"], prob_columns].to_numpy(dtype=np.float64)
    out: dict[str, Any] = {f"baseline_{k}": v for k, v in baseline.items() if isinstance(v, (int, float)) and k in metrics}
    out["baseline_classifier"] = baseline.get("classifier")
    out["auc_minus_baseline"] = metrics["auc"] - baseline["auc"]
    out["accuracy_minus_baseline"] = metrics["accuracy"] - baseline["accuracy"]
    lower, upper = paired_bootstrap_difference(labels, probs, baseline_probs, cfg.bootstrap_samples, cfg.seed)
    out["auc_minus_baseline_ci_lower"], out["auc_minus_baseline_ci_upper"] = lower, upper
    return out


def write_plot_data(out_dir: Path, labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...], bins: int) -> None:
    """ROC, reliability and confusion data as JSON lists, for `dvc plots` (see dvc.yaml).

    Multi-class ROC is the micro-average of the one-vs-rest curves.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if probs.shape[1] == 2:
        fpr, tpr, thresholds = roc_curve(labels, probs[:, 1]) if len(np.unique(labels)) == 2 else ([], [], [])
    else:
        onehot = np.eye(probs.shape[1])[labels]
        fpr, tpr, thresholds = roc_curve(onehot.ravel(), probs.ravel())
    roc = [{"fpr": float(f), "tpr": float(t), "threshold": float(min(th, 1.0))} for f, t, th in zip(fpr, tpr, thresholds)]
    (out_dir / "roc.json").write_text(json.dumps(roc))
    (out_dir / "calibration.json").write_text(json.dumps(reliability_bins(labels, probs, bins)))
    confusion = [{"actual": class_names[a], "predicted": class_names[p]} for a, p in zip(labels, predicted)]
    (out_dir / "confusion.json").write_text(json.dumps(confusion))


@dataclass(frozen=True)
class _Splits:
    """The validation and test images, their labels and rows (for recordings: per window)."""

    x_val: np.ndarray
    y_val: np.ndarray
    val_rows: pd.DataFrame
    x_test: np.ndarray
    y_test: np.ndarray
    rows: pd.DataFrame

    def predict(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """Validation and test probabilities of `model`, per image (or window)."""
        return predict_probs(model, self.x_val), predict_probs(model, self.x_test)

    def per_item(self, val_probs: np.ndarray, test_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities per image, or per recording (the mean of its windows')."""
        if "window" in self.rows:
            return per_recording(self.val_rows, val_probs, self.y_val)[1], per_recording(self.rows, test_probs, self.y_test)[1]
        return val_probs, test_probs

    def labels(self) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """Validation and test labels and the test rows, one per recording for recordings."""
        if "window" not in self.rows:
            return self.y_val, self.y_test, self.rows
        rows, _, y_test = per_recording(self.rows, np.zeros((len(self.rows), 1)), self.y_test)
        return per_recording(self.val_rows, np.zeros((len(self.val_rows), 1)), self.y_val)[2], y_test, rows


def at_threshold(y_val: np.ndarray, val_probs: np.ndarray, y_test: np.ndarray, test_probs: np.ndarray,
                 cfg: EvaluateConfig) -> tuple[dict[str, float], float]:
    """Test metrics at the operating threshold chosen on validation (two classes; else the arg-max), and that threshold."""
    binary = val_probs.shape[1] == 2
    threshold = choose_threshold(y_val, val_probs[:, 1], cfg.operating_point, cfg.target_sensitivity) if binary else 0.5
    return classification_metrics(y_test, test_probs, threshold, cfg.calibration_bins), threshold


def member_metrics(networks: list[nn.Module], spec: ModelSpec, splits: _Splits, cfg: EvaluateConfig) -> list[dict[str, float]]:
    """Each ensemble member's test metrics alone, predicting as the ensemble does (flips, prior correction)."""
    y_val, y_test, _ = splits.labels()
    single = replace(spec, members=1)
    out = []
    for network in networks:
        val_probs, test_probs = splits.per_item(*splits.predict(spec_predictor([network], single)))
        metrics, _ = at_threshold(y_val, val_probs, y_test, test_probs, cfg)
        out.append({k: metrics[k] for k in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")})
    return out


def calibrated(spec: ModelSpec, y_val: np.ndarray, val_probs: np.ndarray) -> ModelSpec:
    """`spec` with the temperature that minimises the validation NLL of its probabilities (`val_probs`,
    made at temperature 1) when the log-probabilities are divided by it before the prior correction."""
    adjustment = spec.adjustment()
    raw = val_probs if adjustment is None else correct_probs(val_probs, -adjustment)
    return replace(spec, temperature=fit_temperature(y_val, raw, adjustment))


def evaluate_model(data_dir: Path, model_dir: Path, cfg: EvaluateConfig, out_dir: Path, baseline_dir: Path | None = None) -> EvalReport:
    """Metrics of the model in `model_dir` on the test split of `data_dir`, beside the baseline's when given.

    The model predicts as `cfg` says (test-time flips, prior correction: `ModelSpec.predicting`; with
    `calibrate_prediction` a temperature fitted on validation before the correction), which
    metrics.json records under `prediction` for packaging to store with the model. With prior
    correction, `accuracy_uncorrected`, `balanced_accuracy_uncorrected` and `argmax_accuracy_uncorrected`
    say what it changed; for an ensemble, `members` lists each member's metrics alone.
    """
    set_threads(0)
    networks, spec = load_networks(model_dir)
    spec = spec.predicting(cfg.tta_flip_axes, cfg.prior_correction)
    model = spec_predictor(networks, spec)
    splits = _Splits(*load_split(data_dir, "val"), *load_split(data_dir, "test"))
    y_val, y_test, rows = splits.labels()
    val_windows, test_windows = splits.predict(model)
    if cfg.calibrate_prediction:
        spec = calibrated(spec, splits.y_val, val_windows)
        val_windows, test_windows = splits.predict(spec_predictor(networks, spec))
    val_probs, test_probs = splits.per_item(val_windows, test_windows)
    binary = len(spec.class_names) == 2
    scores, threshold = at_threshold(y_val, val_probs, y_test, test_probs, cfg)
    metrics: dict[str, Any] = dict(scores)
    for name, fn in {
        "auc": score_auc,
        "accuracy": lambda y, p: float((predict_labels(p, threshold) == y).mean()),
    }.items():
        metrics[f"{name}_ci_lower"], metrics[f"{name}_ci_upper"] = bootstrap_ci(y_test, test_probs, fn, cfg.bootstrap_samples, cfg.seed)
    if (adjustment := spec.adjustment()) is not None:  # undone image by image (window by window), as it was applied
        raw_val, raw_test = splits.per_item(correct_probs(val_windows, -adjustment), correct_probs(test_windows, -adjustment))
        uncorrected, _ = at_threshold(y_val, raw_val, y_test, raw_test, cfg)
        metrics.update({f"{k}_uncorrected": uncorrected[k] for k in ("accuracy", "balanced_accuracy", "argmax_accuracy")})
    metrics["nll"] = negative_log_likelihood(y_test, test_probs)
    if binary:  # the PhysioNet 2016 challenge's score
        metrics["macc"] = (metrics["sensitivity"] + metrics["specificity"]) / 2
    if cfg.temperature_scaling:
        temperature = fit_temperature(y_val, val_probs)
        scaled = apply_temperature(test_probs, temperature)
        metrics["temperature"] = temperature
        metrics["ece_scaled"] = expected_calibration_error(y_test, scaled, cfg.calibration_bins)
        metrics["nll_scaled"] = negative_log_likelihood(y_test, scaled)
    metrics["val_auc"] = score_auc(y_val, val_probs)
    metrics["n_test"] = len(y_test)
    metrics.update(patient_metrics(rows["patient_id"], y_test, test_probs, threshold))  # clips: per patient too
    metrics["operating_threshold"] = threshold
    metrics["operating_point"] = cfg.operating_point if binary else "argmax"
    if baseline_dir is not None:
        metrics.update(compare_with_baseline(baseline_dir, rows, y_test, test_probs, metrics, cfg))
    metrics["subgroups"] = subgroup_metrics(rows, y_test, test_probs, threshold)
    metrics["prediction"] = {**spec.prediction(), "members": spec.members}
    if spec.members > 1:
        metrics["members"] = member_metrics(networks, spec, splits, cfg)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=True))
    predicted = predict_labels(test_probs, threshold)
    table = rows[["image_id", "path", "label"]].assign(predicted=[spec.class_names[i] for i in predicted])
    for i, name in enumerate(spec.class_names):
        table[f"prob_{name}"] = test_probs[:, i]
    table.to_csv(out_dir / PREDICTIONS_FILE, index=False, float_format="%.8g")
    write_plot_data(out_dir / PLOTS_DIR, y_test, test_probs, predicted, spec.class_names, cfg.calibration_bins)
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return EvalReport(out_dir / METRICS_FILE, flat, threshold)


def main() -> None:
    args = stage_arguments(__doc__, ["data", "model"], {"baseline": "the baseline stage's output, to compare against"})
    keep_freed_memory()
    report = evaluate_model(args.data, args.model, load_params(args.params).evaluate, args.out, args.baseline)
    shown = ", ".join(f"{k} {report.metrics[k]:.4f}" for k in ("auc", "accuracy", "sensitivity", "specificity"))
    print(f"evaluate: {shown}")


if __name__ == "__main__":
    main()
