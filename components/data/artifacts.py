"""The small frozen records that stages hand to each other: paths, hashes, counts, names.

Steps never pass tensors or DataFrames to each other; they pass these, and the files they
point to are the data contract (the manifest: `components.data.manifest`, docs/manifest.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# File names inside the stage output folders (dvc.yaml's outs): what a stage writes and its readers
# (the report, the gate, packaging) open, kept here so that reading them imports no torch.
DATASET_FILE = "dataset.json"  # prepare: class names, input shape, preprocessing, counts (components.data.prepared)
WEIGHTS_FILE = "model.pt"  # train: the network's state dict (components.ml.models.save_model)
SPEC_FILE = "model.json"  # train: architecture, input shape, class names, preprocessing
HISTORY_FILE = "history.json"  # train: per-epoch figures
TRAINING_FILE = "training.json"  # train: the training run's figures
CHECKPOINT_FILE = "checkpoint.pt"  # train's state folder: the resumable training state
METRICS_FILE = "metrics.json"  # evaluate and baseline
PREDICTIONS_FILE = "predictions.csv"  # evaluate and baseline: one row per test image
PLOTS_DIR = "plots"  # evaluate: DVC plot data
# package: in a Bento, beside the service module, the pinned model and serving settings (services.settings)
MODEL_REF_FILE = "model_ref.json"


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_digest(*parts: Path | bytes) -> str:
    """sha256 over `parts`, each hashed on its own: a file's content (a missing file: empty), or bytes.
    The key of a cache or memo of what those inputs determine."""
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else (part.read_bytes() if part.is_file() else b"")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def read_keyed_json(path: Path | None, key: str) -> dict[str, Any] | None:
    """The JSON object in `path` when its "key" field is `key` (a cache or memo written for those
    inputs); None when there is none, it is unreadable, or it was written for other inputs."""
    try:
        record = json.loads(Path(path).read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def write_json_atomically(path: Path, record: dict[str, Any]) -> None:
    """Write `record` as JSON to `path` by `write_text_atomically`."""
    write_text_atomically(path, json.dumps(record, default=list))


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader, or a process killed at any point, sees the old or the new
    content whole, never a mix, even across a power loss.

    The text goes to a temporary file of a unique name in the same folder (concurrent writers never
    share one), which is flushed to disk and renamed over `path`; the folder is then flushed too, so
    that the rename itself is on disk.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def to_dict(record: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a record (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(record).items()}


@dataclass(frozen=True)
class IngestedDataset:
    """What ingest produced: a manifest and the pixel files beside it."""

    manifest: Path
    source: str
    kind: str  # dicom | nifti | video | audio | png | audio-folders | npz
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
    suites_reused: bool = False  # the suites' outcomes came from the memo (same manifest, params and code)


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
