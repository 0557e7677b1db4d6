"""The prepared data contract: what prepare writes and train, baseline and evaluate read.

Per split, `<split>.npz` (`images` float32 (N, C, *spatial) in [0, 1], `labels` int64 indices
into `class_names`) and `<split>.csv` (one row per image: id, patient, label, path and the
subgroup columns the source has), in the same order; `dataset.json` holds the class names, the
input shape, the preprocessing and the counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.artifacts import DATASET_FILE


def write_split(out_dir: Path, split: str, images: np.ndarray, labels: np.ndarray, rows: pd.DataFrame) -> None:
    """Write one split's arrays and rows (same order) into `out_dir`."""
    np.savez(out_dir / f"{split}.npz", images=images, labels=labels)
    rows.to_csv(out_dir / f"{split}.csv", index=False)


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Images, integer labels and per-image rows of one prepared split."""
    with np.load(data_dir / f"{split}.npz", allow_pickle=False) as arrays:
        images, labels = arrays["images"], arrays["labels"]
    rows = pd.read_csv(data_dir / f"{split}.csv", dtype=str, keep_default_na=False)
    return images, labels, rows


def write_dataset_info(out_dir: Path, info: dict[str, Any]) -> None:
    (out_dir / DATASET_FILE).write_text(json.dumps(info, indent=2))


def read_dataset_info(data_dir: Path) -> dict[str, Any]:
    """The prepared dataset's `dataset.json`: class_names, input_shape, preprocessing, counts, class_counts."""
    return json.loads((data_dir / DATASET_FILE).read_text())
