"""The manifest contract: what ingest writes and every later stage reads (docs/manifest.md).

An ingest folder holds `MANIFEST_FILE` (one row per image: `MANIFEST_COLUMNS`, then whichever of
`EXTRA_COLUMNS` the source fills), the pixel shards (`components.data.shards`), `SOURCES_FILE`
(``image_id``, the source file) and `PROBLEMS_FILE` (every skipped input as ``{"file", "reason"}``).
pandas and pyarrow load on first use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

MANIFEST_FILE = "manifest.parquet"
SOURCES_FILE = "sources.csv"
PROBLEMS_FILE = "problems.json"
CLASS_NAMES_ATTR = "class_names"  # key of the class order in the manifest's metadata (DataFrame.attrs)
CLIP_SPEC_ATTR = "clip_spec"  # key of how clips were sampled (ingest.video), in a clip dataset's metadata
AUDIO_RATE_ATTR = "audio_sample_rate"  # key of the stored recordings' rate (Hz) in the same metadata

# Required columns and their pandas dtypes, in this order.
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
# A recording's columns (components/readers/audio.py); its samples are stored as a 1 x N float32 array.
AUDIO_COLUMNS: dict[str, str] = {
    "sample_rate": "int64",  # Hz of the source file (the stored samples are at ingest.audio.sample_rate)
    "source_channels": "int64",  # channels of the source file (stored: downmixed to mono)
    "duration_s": "float64",
    "peak_dbfs": "float64", "rms_dbfs": "float64", "dc_offset": "float64",
    "clipped_fraction": "float64", "silent_fraction": "float64",
}
# Optional columns and their dtypes, in this order, after MANIFEST_COLUMNS.
EXTRA_COLUMNS: dict[str, str] = {
    "site": "string", "sex": "string", "age_band": "string", "scanner": "string", "modality": "string",
    "photometric": "string",
    "spacing_d": "float64", "spacing_h": "float64", "spacing_w": "float64",  # mm between slices, rows, columns
    # Why the pixels may carry burned-in text and how that was handled (components.privacy.burned_in):
    # PNG, JPEG, VIDEO or a DICOM modality accepted by ingest.accept_burned_in_risk, with " masked"
    # when ingest.video.mask blacked out its regions; absent for images at no such risk.
    "burned_in_risk": "string",
    # Clips (video files, DICOM cine; stored (frames sampled, H, W)): the source clip's frame count,
    # frame rate, seconds, frame size in pixels and codec (or DICOM transfer syntax).
    # Nullable integers ("Int64"): a dataset may mix clips and images, which validate then flags.
    "frames": "Int64", "fps": "float64", "duration_s": "float64", "source_height": "Int64", "source_width": "Int64",
    "codec": "string",
    **AUDIO_COLUMNS,
}
SUBGROUP_COLUMNS: tuple[str, ...] = ("site", "sex", "age_band", "scanner")  # what the gate can put floors on
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Names that conventionally mean "no finding": listed first so that index 1 is the finding.
NEGATIVE_CLASS_NAMES = ("normal", "negative", "healthy", "benign", "no_finding", "no finding", "control")


def manifest_schema() -> pa.Schema:
    """The Arrow schema of every column the manifest may have, in the contract's order."""
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "Int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([(c, types[t]) for c, t in {**MANIFEST_COLUMNS, **EXTRA_COLUMNS}.items()])


class ManifestRows:
    """Manifest rows collected in compact Arrow batches (a Python object per value would make memory
    grow by kilobytes per image)."""

    def __init__(self, batch_rows: int = 1024):
        self.batch_rows = batch_rows
        self._batches: list[pa.Table] = []
        self._pending: list[dict[str, Any]] = []

    def append(self, row: dict[str, Any]) -> None:
        """One row: contract columns by name; missing or None values are null."""
        self._pending.append(row)
        if len(self._pending) >= self.batch_rows:
            self._pack()

    def _pack(self) -> None:
        if self._pending:
            import pyarrow as pa

            self._batches.append(pa.Table.from_pylist(self._pending, schema=manifest_schema()))
            self._pending = []

    def frame(self) -> pd.DataFrame:
        """The manifest: `MANIFEST_COLUMNS`, then the `EXTRA_COLUMNS` some row filled; strings stay in Arrow."""
        self._pack()
        import pandas as pd
        import pyarrow as pa

        table = pa.concat_tables(self._batches) if self._batches else manifest_schema().empty_table()
        extras = [c for c in EXTRA_COLUMNS if table.column(c).null_count < len(table)]
        table = table.select([*MANIFEST_COLUMNS, *extras])
        return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest written by ingest with the contract's dtypes (unknown extra columns as strings)."""
    import pandas as pd

    df = pd.read_parquet(path)
    dtypes = {c: MANIFEST_COLUMNS.get(c) or EXTRA_COLUMNS.get(c, "string") for c in df.columns}
    return df.astype(dtypes)


def order_class_names(labels: Iterable[str]) -> tuple[str, ...]:
    """The distinct labels in a stable order: numerically when all are integers (MedMNIST); otherwise a
    conventional negative name ("normal", "benign"...) first, then alphabetically, so that for two
    classes `class_names[1]`, the positive class, is the finding."""
    labels = set(labels)
    if all(re.fullmatch(r"-?\d+", x) for x in labels):
        return tuple(sorted(labels, key=int))
    first = [x for x in NEGATIVE_CLASS_NAMES if x in labels]
    return (*first, *sorted(labels - set(first)))
