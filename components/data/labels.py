"""The ``labels.csv`` contract of a labelled source folder.

Columns: the key column (``path`` by default: a file relative to the folder; or a DICOM keyword such
as ``SOPInstanceUID`` matched against each file's header), ``label``, and optionally
``patient_id``, ``split`` (train/val/test) and subgroup columns (``site``, ``sex``, ``age_band``,
``scanner``: `components.data.manifest.SUBGROUP_COLUMNS`), which take precedence over a header's. Values are stripped; a UTF-8 byte-order mark is allowed.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath
from typing import NamedTuple


_UNCLEAN_PARTS = frozenset({"", ".", ".."})  # path parts `relative_file` drops or refuses


class LabelRow(NamedTuple):
    """One row: its line number in the file (the header is line 1) and its stripped values by column."""

    line: int
    values: dict[str, str]


def read_labels(path: Path, key: str) -> list[LabelRow]:
    """The rows of a labels file that must have the columns `key` and ``label``.

    Raises:
        ValueError: a needed column is missing (the message names the file and its columns).
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        missing = [c for c in (key, "label") if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; has {columns}")
        return [LabelRow(i + 2, {k: (v or "").strip() for k, v in r.items() if k is not None})
                for i, r in enumerate(reader)]


def relative_file(value: str) -> str | None:
    """A ``path`` value as a clean posix path inside the folder; None when empty, absolute or leaving it."""
    if not value:
        return None
    if "\\" not in value and value[0] != "/" and not _UNCLEAN_PARTS.intersection(value.split("/")):
        return value  # already clean, the usual case: no path built (ingest asks once per row)
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        return None
    parts = [x for x in p.parts if x not in (".", "")]
    return "/".join(parts) or None
