"""What evaluation adds for clips: scores per patient, the mean of the patient's clip scores.

A clip dataset usually has several clips per patient (views, positions of the probe), and its label
often belongs to the patient (a PCR result, a diagnosis). Where every patient's clips share one
label, the patient's probabilities are the mean of its clips' and the patient-level metrics are
computed on those.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from components.ml.metrics import predict_labels, score_auc


def patient_scores(patients: pd.Series, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(one label per patient, the mean of its clips' probabilities), patients in first-seen order;
    None when no patient has two clips or some patient's clips differ in label (the label is then
    the clip's, not the patient's)."""
    frame = pd.DataFrame(probs).assign(patient=patients.to_numpy(), label=labels)
    grouped = frame.groupby("patient", sort=False)
    if (grouped.size() < 2).all() or (grouped["label"].nunique() > 1).any():
        return None
    mean = grouped[list(range(probs.shape[1]))].mean().to_numpy(dtype=np.float64)
    return grouped["label"].first().to_numpy(dtype=np.int64), mean


def patient_metrics(patients: pd.Series, labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """``patient_auc``, ``patient_accuracy`` and ``n_test_patients`` where `patient_scores` applies, else {}."""
    found = patient_scores(patients, labels, probs)
    if found is None:
        return {}
    per_label, per_probs = found
    return {"patient_auc": score_auc(per_label, per_probs),
            "patient_accuracy": float((predict_labels(per_probs, threshold) == per_label).mean()),
            "n_test_patients": len(per_label)}
