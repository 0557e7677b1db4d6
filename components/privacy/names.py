"""Names that carry no path: a source is stored under its label, each of its files under a pseudonym.

PACS exports name folders and files after the patient (``SURNAME_Given_MRN/IM0001.dcm``), so no
artifact, log line, registry row, Prefect name, parameter or tag, or notification names a source or a
source file by its path:

* a source is named by its label (`source_label`): the name the operator gave (``--name``), a
  public dataset's own name (``embedded``, ``cohort:<name>``, ``medmnist:<name>``, a MedMNIST
  ``<name>.npz``), else ``dataset-`` + a salted pseudonym of its absolute path;
* a file of a source is named by ``file-`` + a salted pseudonym of its path relative to the source
  (`file_pseudonym`), or by its position (``labels.csv:12``, ``train_images[3]``).

`SourceNames` is the one place where the real paths are kept: a JSON file in the workspace's state
folder (never a DVC output, never pushed, git-ignored, never in a Bento), for the operator's own
terminal (`reveal`) and to take paths out of any text that leaves the process (`redact`).
`path_identifiers` gives the path components the PHI scan looks for.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from components.data.labels import relative_file
from components.data.medmnist import MEDMNIST_PREFIX
from components.data.sources import LABELS_FILE, is_labels_file, walk_files
from components.privacy.deid import pseudonym

EMBEDDED = "embedded"  # the embedded synthetic CT cohort (components.demo), the flows' default source
COHORT_PREFIX = "cohort:"  # the other embedded cohorts (cine, dictation, tones), generated in the workspace
_MEDMNIST_FILE = re.compile(r"[a-z0-9_]*mnist[a-z0-9_]*\.npz")
_LABEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
FILE_PREFIX, DATASET_PREFIX = "file-", "dataset-"
# Path components too common to be anyone's name (the pipeline writes them itself); a component
# must have at least 4 characters, and a number at least 6 digits, to be looked for.
_COMMON_PARTS = frozenset({"images", "image", "dicom", "nifti", "labels", "labels.csv", "train", "val", "test",
                           "data", "export", "series", "study", "slices", "volumes"})


def file_pseudonym(rel: str, salt: str) -> str:
    """How artifacts name the source file at `rel` (a posix path relative to the source)."""
    return FILE_PREFIX + pseudonym(rel, salt, 12)


def is_known(source: str) -> bool:
    """Whether `source` names a dataset by a public name: an embedded cohort or a MedMNIST dataset."""
    return source == EMBEDDED or source.startswith((MEDMNIST_PREFIX, COHORT_PREFIX))


def source_label(source: str, salt: str, name: str | None = None) -> str:
    """The label a source is stored under (see the module docstring).

    Raises:
        ValueError: `name` is not a lower-case label (letters, digits, ``.``, ``_``, ``-``; 64 at most).
    """
    if name:
        if not _LABEL.fullmatch(name):
            raise ValueError(f"dataset name {name!r}: use lower-case letters, digits, '.', '_' or '-' (64 at most)")
        return name
    if is_known(source):
        return source
    path = Path(source).expanduser().resolve()
    if path.is_file() and _MEDMNIST_FILE.fullmatch(path.name):
        return path.stem
    return DATASET_PREFIX + pseudonym(str(path), salt, 10)


def path_identifiers(root: Path, files: Iterable[str], public: Iterable[str] = ()) -> set[str]:
    """The components of the source's folder name and of its files' relative paths (with and without
    suffix) that could name a patient, for the PHI scan; `public` are names the data itself stores
    (class and split folder names, the dataset's label)."""
    skip = _COMMON_PARTS | {p.lower() for p in public}
    parts = {root.name, Path(root.name).stem}
    for rel in files:
        for part in PurePosixPath(rel).parts:
            parts |= {part, PurePosixPath(part).stem}
    def specific(part: str) -> bool:
        stem = PurePosixPath(part).stem
        return len(stem) >= 4 and not (stem.isdigit() and len(stem) < 6) and not {part.lower(), stem.lower()} & skip

    return {p for p in parts if specific(p)}


def project_words(root: Path) -> frozenset[str]:
    """The words of the project's own code and params (lower case): what its artifacts say of
    themselves (``audio``, ``patients``, ``frames``...), so a folder of that name cannot be told apart
    from the pipeline's own text and is not sought by the PHI scan."""
    files = [*(p for package in ("components", "flows", "services", "cli") for p in (root / package).rglob("*.py")
               if "demo" not in p.parts),  # the embedded cohorts' generators write fake names and voices
             root / "params.yaml"]
    words: set[str] = set()
    for path in files:
        if path.is_file():
            words.update(re.findall(r"[a-z0-9_]+", path.read_text(encoding="utf-8", errors="replace").lower()))
    return frozenset(words)


def source_folder(path: Path | str) -> Path:
    """The folder whose files a source reads: the source itself, or the folder of a labels file (``--labels``)."""
    path = Path(path)
    return path.parent if path.suffix.lower() == ".csv" else path


def _listed(path: Path) -> list[str]:
    """The paths the source's labels file lists (a missing file is reported under its pseudonym too)."""
    try:
        with open(path if is_labels_file(path) else path / LABELS_FILE, newline="", encoding="utf-8-sig") as f:
            return [rel for row in csv.DictReader(f) if (rel := relative_file(row.get("path") or "")) is not None]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


class SourceNames:
    """The workspace's local map from labels and file pseudonyms to real paths (mode 0600).

    Args:
        path: the map's file, in the workspace's state folder.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
        self.sources: dict[str, str] = dict(data.get("sources", {}))
        self.files: dict[str, dict[str, str]] = {k: dict(v) for k, v in data.get("files", {}).items()}

    def path_of(self, label: str) -> str | None:
        """The absolute path a label stands for, None when it is no registered label."""
        return self.sources.get(label)

    def register(self, label: str, path: Path, salt: str) -> None:
        """Record that `label` is the source at `path`, with the pseudonym of each of its files; saved at once."""
        root = Path(path).expanduser().resolve()
        self.sources[label] = str(root)
        files = walk_files(source_folder(root)) if root.exists() else []
        self.files[label] = {file_pseudonym(rel, salt): rel for rel in [*files, *_listed(root)]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"sources": self.sources, "files": self.files}, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def _pairs(self) -> list[tuple[str, str]]:
        """(real text, its name) for every source and file known, longest real text first."""
        pairs = []
        for label, root in self.sources.items():
            folder = str(source_folder(root))
            pairs += [(root, label), (folder, label)]
            for pseudo, rel in self.files.get(label, {}).items():
                pairs += [(f"{folder}/{rel}", pseudo), (rel, pseudo)]
        return sorted(pairs, key=lambda p: -len(p[0]))

    def redact(self, text: str) -> str:
        """`text` with every known source path and file path replaced by its label or pseudonym."""
        for real, name in self._pairs():
            if real in text:
                text = text.replace(real, name)
        return text

    def reveal(self, text: str) -> str:
        """`text` with labels of path sources and file pseudonyms followed by their real paths (for the
        operator's own terminal only)."""
        def show(match: re.Match[str]) -> str:
            name = match.group(0)
            real = self.sources.get(name) or next((f"{source_folder(self.sources[label])}/{files[name]}"
                                                   for label, files in self.files.items() if name in files), None)
            return f"{name} ({real})" if real else name

        return re.sub(rf"\b(?:{FILE_PREFIX}[0-9a-f]{{12}}|{DATASET_PREFIX}[0-9a-f]{{10}})\b", show, text)
