"""The small frozen records that stages hand to each other: paths, hashes, counts, names.

Steps never pass tensors or DataFrames to each other; they pass these, and the files they
point to are the data contract (see docs/manifest.md for the manifest's columns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The manifest is one row per image. Required columns and their pandas dtypes; the
# optional subgroup columns (site, sex, age, scanner, modality...) follow when a source has them.
MANIFEST_COLUMNS: dict[str, str] = {
    "image_id": "string",  # stable id within the dataset (no patient identifiers in it)
    "patient_id": "string",  # pseudonym (salted hash); never the source's patient id
    "label": "string",  # class name; class order lives in class_names
    "split": "string",  # train / val / test when the source fixes it, else missing
    "path": "string",  # image file, relative to the manifest's folder
    "ndim": "int64",  # spatial dimensions: 2 or 3
    "height": "int64",
    "width": "int64",
    "depth": "int64",  # 1 for 2D images
    "channels": "int64",
    "dtype": "string",  # dtype of the stored pixels
    "intensity_min": "float64",
    "intensity_max": "float64",
    "intensity_mean": "float64",
    "intensity_std": "float64",
    "content_hash": "string",  # sha256 of the stored pixel array's bytes and shape
}
SUBGROUP_COLUMNS: tuple[str, ...] = ("site", "sex", "age_band", "scanner")
SPLITS: tuple[str, ...] = ("train", "val", "test")


def to_dict(record: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a record (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(record).items()}


@dataclass(frozen=True)
class IngestedDataset:
    """What ingest produced: a manifest and the pixel files beside it."""

    manifest: Path
    source: str
    kind: str  # dicom | nifti | png | npz
    num_images: int
    num_patients: int
    class_names: tuple[str, ...]
    problems: tuple[dict[str, str], ...] = ()  # {"file", "reason"} for inputs that were skipped


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of the Great Expectations suite over a manifest."""

    success: bool
    report_html: Path
    report_json: Path
    failed_expectations: tuple[str, ...]  # the blocking checks that failed ("check: expectation")
    statistics: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # the warning checks that failed


@dataclass(frozen=True)
class PreparedDataset:
    """Preprocessed arrays per split, with the preprocessing they went through."""

    out_dir: Path
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]  # (channels, *spatial)
    counts: dict[str, int]


@dataclass(frozen=True)
class TrainedModel:
    checkpoint: Path
    family: str
    best_epoch: int
    best_val_auc: float


@dataclass(frozen=True)
class EvalReport:
    metrics_path: Path
    metrics: dict[str, float]
    operating_threshold: float


@dataclass(frozen=True)
class PackagedModel:
    model_tag: str  # name:version in the BentoML model store
    bento_tag: str
    artifact_sha256: str
