"""What a source holds: its layout (a labelled folder, class folders, a MedMNIST archive) and the files
the readers claim in it, by name. Ingest (components.stages.ingest) reads the files themselves."""

from __future__ import annotations

import os
from pathlib import Path

from components.readers import reader_for_name

SUPPORTED_SOURCES = (
    ("a folder with labels.csv (columns path or the configured key column, label; optional "
     "patient_id, split) and the DICOM, NIfTI (.nii, .nii.gz) or video (.mp4, .mov, .avi) files it lists, "
     "or another .csv labels file in such a folder"),
    "a folder of PNG/JPEG images in class-named subfolders (optionally under train/val/test)",
    "the same layouts with WAV, FLAC or OGG recordings (labels.csv, or class-named subfolders)",
    "a MedMNIST .npz file (train/val/test _images and _labels), or medmnist:<name>",
)
LABELS_FILE = "labels.csv"  # a labelled folder's default labels file


def is_labels_file(src: Path) -> bool:
    """Whether `src` names a labels file (a .csv) rather than a folder or an archive."""
    return src.is_file() and src.suffix.lower() == ".csv"


def detect_source(src: Path) -> tuple[str, list[str]]:
    """The layout of a source and, for a labelled folder, its files that some reader claims by name
    (relative posix paths; [] for the other layouts). Layouts: "npz"; a labelled folder by the format of
    the files it lists ("dicom", "nifti", "video", "audio"); class folders of images ("png") or of
    recordings ("audio-folders").

    Raises:
        ValueError: none of `SUPPORTED_SOURCES`.
    """
    if src.is_file() and src.suffix.lower() == ".npz":
        return "npz", []
    folder = src.parent if is_labels_file(src) else src
    if folder != src or (src / LABELS_FILE).is_file():
        claimed = [(p, r.name) for p in walk_files(folder) if (r := reader_for_name(p)) is not None]
        names = {name for _, name in claimed}
        return names.pop() if names in ({"nifti"}, {"video"}, {"audio"}) else "dicom", [p for p, _ in claimed]
    if src.is_dir():
        for sub in src.iterdir():
            found = {r.name for p in sub.rglob("*") if p.is_file() and (r := reader_for_name(p.name)) is not None
                     and r.in_class_folders} if sub.is_dir() and not sub.name.startswith(".") else set()
            if found:
                return "audio-folders" if found == {"audio"} else "png", []
    raise ValueError(f"{src}: unsupported source; supported: {'; '.join(SUPPORTED_SOURCES)}")


def in_class_folders(name: str) -> bool:
    """Whether a file called `name` is read from class-named folders (a source without labels.csv)."""
    reader = reader_for_name(name)
    return reader is not None and reader.in_class_folders


def walk_files(root: Path) -> list[str]:
    """Relative posix paths of the non-hidden files under root, sorted (a file: its own name); links to
    files count, linked folders are not entered, unreadable folders are skipped."""
    if root.is_file():
        return [root.name]
    found: list[str] = []

    def visit(folder: str, prefix: str) -> None:  # os.scandir: file types without a stat per file
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_file():
                found.append(prefix + entry.name)
            elif entry.is_dir(follow_symlinks=False):
                visit(entry.path, f"{prefix}{entry.name}/")

    visit(str(root), "")
    return sorted(found)
