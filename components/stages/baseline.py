"""baseline: a classical classifier on hand-crafted, radiomics-style features, on the same split.

The network has to earn its place: this stage fits a scikit-learn classifier on features of the
prepared images (the same arrays the network sees, intensities in [0, 1]) of the train split,
chooses its operating threshold on the validation split and measures it on the test split with
the same metric functions as evaluate (components.ml.metrics). Evaluate then reports the network against it
(`baseline_auc`, `auc_minus_baseline` and its paired bootstrap interval).

Features per image (channels averaged to one grey image; 2D or 3D alike):
- first order: mean, standard deviation, skewness, kurtosis, percentiles 5/25/50/75/95,
  entropy of the histogram, fraction of zero-valued pixels;
- intensity histogram: `histogram_bins` equal bins over [0, 1], as fractions;
- texture: grey-level co-occurrence matrices (`grey_levels` levels, symmetric) at distances 1
  and 2 along each axis and the in-plane diagonals, averaged over directions per distance:
  contrast, dissimilarity, homogeneity, energy, entropy, correlation;
- edges: mean and standard deviation of the gradient magnitude (forward differences).

Recordings (prepared as log-mel windows, a ``window`` column in the rows): MFCC and spectral
statistics per window (`components.ml.audio.mfcc_features`), probabilities averaged per recording.

Writes under `out_dir`: `metrics.json` (flat test metrics and the classifier's name) and
`predictions.csv` (per test image: id, label, class probabilities).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from components.config import BaselineConfig, load_params, stage_arguments
from components.data.artifacts import METRICS_FILE, PREDICTIONS_FILE
from components.data.prepared import load_split, read_dataset_info
from components.ml.audio import mfcc_features, per_recording
from components.ml.metrics import choose_threshold, classification_metrics, predict_labels

_CHUNK = 256  # images per co-occurrence batch: bounds memory for volumes


def _offsets(spatial_dims: int, distance: int) -> list[tuple[int, ...]]:
    """Co-occurrence directions: each axis, plus both diagonals of the (H, W) plane."""
    axes = [tuple(distance if i == a else 0 for i in range(spatial_dims)) for a in range(spatial_dims)]
    lead = (0,) * (spatial_dims - 2)
    return [*axes, (*lead, distance, distance), (*lead, distance, -distance)]


def _shifted_pairs(q: np.ndarray, offset: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels of every voxel and its neighbour at `offset`, per image: two (N, M) arrays."""
    src, dst = [slice(None)], [slice(None)]
    for step in offset:
        src.append(slice(max(0, -step), q.shape[len(src)] - max(0, step)))
        dst.append(slice(max(0, step), q.shape[len(dst)] + min(0, step)))
    n = q.shape[0]
    return q[tuple(src)].reshape(n, -1), q[tuple(dst)].reshape(n, -1)


def glcm_features(q: np.ndarray, levels: int, distances: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Texture statistics of quantised images `q` (N, *spatial) with values in [0, levels).

    Returns (N, 6 * len(distances)): per distance, contrast, dissimilarity, homogeneity,
    energy, entropy and correlation of the symmetric, normalised co-occurrence matrix averaged
    over directions.
    """
    n, spatial_dims = q.shape[0], q.ndim - 1
    i, j = np.meshgrid(np.arange(levels), np.arange(levels), indexing="ij")
    diff = (i - j).astype(np.float64)
    out = []
    for distance in distances:
        glcm = np.zeros((n, levels, levels))
        for offset in _offsets(spatial_dims, distance):
            a, b = _shifted_pairs(q, offset)
            flat = (np.arange(n)[:, None] * levels * levels + a * levels + b).ravel()
            counts = np.bincount(flat, minlength=n * levels * levels).reshape(n, levels, levels)
            glcm += counts + counts.transpose(0, 2, 1)
        p = glcm / np.maximum(glcm.sum(axis=(1, 2), keepdims=True), 1)
        mu_i, mu_j = (p * i).sum(axis=(1, 2)), (p * j).sum(axis=(1, 2))
        sd_i = np.sqrt((p * (i - mu_i[:, None, None]) ** 2).sum(axis=(1, 2)))
        sd_j = np.sqrt((p * (j - mu_j[:, None, None]) ** 2).sum(axis=(1, 2)))
        cov = (p * (i - mu_i[:, None, None]) * (j - mu_j[:, None, None])).sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            correlation = np.where(sd_i * sd_j > 0, cov / (sd_i * sd_j), 1.0)  # a flat image is perfectly self-correlated
            entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=(1, 2))
        out += [
            (p * diff**2).sum(axis=(1, 2)),
            (p * np.abs(diff)).sum(axis=(1, 2)),
            (p / (1 + diff**2)).sum(axis=(1, 2)),
            (p**2).sum(axis=(1, 2)),
            entropy,
            correlation,
        ]
    return np.stack(out, axis=1)


def extract_features(images: np.ndarray, cfg: BaselineConfig) -> np.ndarray:
    """Radiomics-style features of prepared images (N, C, *spatial) in [0, 1]: (N, F) float64."""
    grey = images.mean(axis=1, dtype=np.float32)
    n = grey.shape[0]
    flat = grey.reshape(n, -1)
    mean, std = flat.mean(axis=1), flat.std(axis=1)
    z = (flat - mean[:, None]) / np.where(std > 0, std, 1.0)[:, None]
    z2 = z * z  # products, not `**`: float powers are several times slower on volumes
    bins = np.clip((flat * cfg.histogram_bins).astype(np.int64), 0, cfg.histogram_bins - 1) + np.arange(n)[:, None] * cfg.histogram_bins
    histogram = np.bincount(bins.ravel(), minlength=n * cfg.histogram_bins).reshape(n, -1) / flat.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(histogram > 0, histogram * np.log2(histogram), 0.0).sum(axis=1)
    first_order = np.column_stack(
        [mean, std, (z2 * z).mean(axis=1), (z2 * z2).mean(axis=1), *np.percentile(flat, [5, 25, 50, 75, 95], axis=1), entropy, (flat == 0).mean(axis=1)]
    )
    # Forward differences along every axis, cropped to a common shape: the gradient magnitude.
    def crop(axis: int) -> tuple[slice, ...]:
        return tuple(slice(None) if i in (0, axis) else slice(0, -1) for i in range(grey.ndim))

    gradient = np.sqrt(sum(np.diff(grey, axis=a)[crop(a)] ** 2 for a in range(1, grey.ndim))).reshape(n, -1)
    q = np.clip((grey * cfg.grey_levels).astype(np.int64), 0, cfg.grey_levels - 1)
    texture = np.concatenate([glcm_features(q[k : k + _CHUNK], cfg.grey_levels) for k in range(0, n, _CHUNK)]) if n else np.zeros((0, 12))
    return np.column_stack([first_order, histogram, texture, gradient.mean(axis=1), gradient.std(axis=1)]).astype(np.float64)


def make_classifier(cfg: BaselineConfig) -> ClassifierMixin:
    """The configured scikit-learn classifier, class-balanced like the network's loss."""
    if cfg.classifier == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
    if cfg.classifier == "random_forest":
        return RandomForestClassifier(n_estimators=300, min_samples_leaf=2, class_weight="balanced", random_state=cfg.seed)
    return HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=300, max_leaf_nodes=15, l2_regularization=1.0, class_weight="balanced",
        early_stopping=True, validation_fraction=0.15, random_state=cfg.seed,
    )


def train_baseline(data_dir: Path, cfg: BaselineConfig, operating_point: tuple[str, float], out_dir: Path) -> dict[str, Any]:
    """Fit on train, choose the threshold on val, measure on test; returns the flat metrics written.

    Args:
        operating_point: evaluate's `operating_point` and `target_sensitivity`, so that the baseline's
            threshold is chosen as the network's is.
    """
    started = time.monotonic()
    class_names = read_dataset_info(data_dir)["class_names"]
    split = {name: load_split(data_dir, name) for name in ("train", "val", "test")}
    audio = "window" in split["train"][2]
    features = {name: mfcc_features(images) if audio else extract_features(images, cfg)
                for name, (images, _, _) in split.items()}
    classifier = make_classifier(cfg).fit(features["train"], split["train"][1])
    probs = {name: _all_class_probs(classifier, features[name], len(class_names)) for name in ("val", "test")}
    y_val, y_test, rows = split["val"][1], split["test"][1], split["test"][2]
    if audio:  # recordings: each one's score is the mean of its windows'
        _, probs["val"], y_val = per_recording(split["val"][2], probs["val"], y_val)
        rows, probs["test"], y_test = per_recording(rows, probs["test"], y_test)
    threshold = choose_threshold(y_val, probs["val"][:, 1], *operating_point) if len(class_names) == 2 else 0.5
    metrics: dict[str, Any] = {
        **classification_metrics(y_test, probs["test"], threshold),
        "operating_threshold": threshold,
        "n_features": int(features["train"].shape[1]),
        "seconds": time.monotonic() - started,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps({**metrics, "classifier": cfg.classifier}, indent=2))
    predicted = predict_labels(probs["test"], threshold)
    table = pd.DataFrame({"image_id": rows["image_id"], "label": rows["label"], "predicted": [class_names[i] for i in predicted]})
    for i, name in enumerate(class_names):
        table[f"prob_{name}"] = probs["test"][:, i]
    table.to_csv(out_dir / PREDICTIONS_FILE, index=False, float_format="%.8g")
    return metrics


def _all_class_probs(classifier: ClassifierMixin, features: np.ndarray, num_classes: int) -> np.ndarray:
    """predict_proba with a column for every class, also those absent from the training split."""
    out = np.zeros((len(features), num_classes))
    out[:, classifier.classes_] = classifier.predict_proba(features)  # type: ignore[attr-defined]
    return out


def main() -> None:
    args = stage_arguments(__doc__, ["data"])
    params = load_params(args.params)
    operating_point = (params.evaluate.operating_point, params.evaluate.target_sensitivity)
    metrics = train_baseline(args.data, params.baseline, operating_point, args.out)
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("auc", "accuracy", "sensitivity", "specificity"))
    print(f"baseline ({params.baseline.classifier}, {metrics['n_features']} features): {shown}")


if __name__ == "__main__":
    main()
