"""Ingest: turn a source into a de-identified manifest plus sharded pixel files.

Sources (`ingest_source` detects the kind; docs/manifest.md is the data contract):

* ``dicom``: a folder holding ``labels.csv`` and the files it lists (nested folders, mixed series),
  usually DICOM; any format `components.readers` reads (PNG, JPEG, NIfTI, ``.npy``) is decoded too.
  Its columns (key ``cfg.key_column``, label, optional patient_id and split): `components.data.labels`.
* ``nifti``: the same layout where the listed files are NIfTI-1/2 volumes (``.nii``, ``.nii.gz``).
* ``video``: the same layout where the listed files are video clips (MP4, MOV, AVI); DICOM cine
  loops come as ``dicom``. Clips are stored as ``cfg.video`` says (`components.readers.clips`).
* A ``.csv`` file inside such a folder: the folder, with that file in place of ``labels.csv`` (a
  dataset with several label sets; ``medgate run --labels FILE``).
* ``audio``: the same layout where the listed files are recordings (WAV, FLAC, OGG); ``audio-folders``:
  recordings in class-named subfolders as for ``png``. Samples are stored at ``cfg.audio.sample_rate``.
* ``png``: a folder of PNG/JPEG images (formats whose reader has ``in_class_folders``) in
  class-named subfolders (``<class>/.../<file>``), or ``<split>/<class>/...`` when every top-level
  folder is train, val or test.
* ``npz``: a MedMNIST ``.npz`` (``{train,val,test}_{images,labels}``); ``medmnist:<name>`` is
  first turned into ``<data root>/<name>.npz`` by `components.data.medmnist.resolve_medmnist`.

Output under ``out_dir``, as `components.data.manifest` describes: the manifest, the pixel shards
(`components.data.shards`), the sources file and the problems file (every skipped input and why).

De-identification: readers return only pseudonyms and derived values (`components.readers.dicom`);
``patient_id`` is labels.csv's ``patient_id``, else the header's, else the file's path, pseudonymised.
No output names a source file by its path, which can carry a patient's name: the sources and problems
files name a file by its pseudonym or position, errors the source by its label (components.privacy.names).
Files at risk of burned-in text (PNG, JPEG, video; US, SC, XA, OT DICOM without BurnedInAnnotation NO)
are refused before decoding unless ``cfg.accept_burned_in_risk`` or, for clips, ``cfg.video.mask``
handles them (components.privacy.burned_in). The service decodes uploads with the same readers, so
training and serving decode identically.

Throughput: inputs are decoded in chunks of ``cfg.shard_size`` (one shard each) by ``cfg.workers``
(`components.data.decoding`)
processes; memory holds a few chunks' worth of small records, never the dataset's pixels. A DICOM
file is parsed once (the burned-in screen hands its dataset to the reader); ``benchmarks/intake.py``
and ``benchmarks/audio.py --intake-only`` measure ingest against bare decoding loops.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from components.config import IngestConfig
from components.data.artifacts import IngestedDataset
from components.data.decoding import decode_files
from components.data.labels import LabelRow, read_labels, relative_file
from components.data.manifest import (
    AUDIO_RATE_ATTR, CLASS_NAMES_ATTR, CLIP_SPEC_ATTR, MANIFEST_FILE, PROBLEMS_FILE, SOURCES_FILE, SPLITS, SUBGROUP_COLUMNS,
    ManifestRows, order_class_names,
)
from components.data.medmnist import MEDMNIST_PREFIX, SplitUnreadable, archive_splits, open_split
from components.data.shards import ShardWriter
from components.data.sources import (
    LABELS_FILE, SUPPORTED_SOURCES, detect_source, in_class_folders, is_labels_file, walk_files,
)
from components.privacy.deid import pseudonym
from components.privacy.names import file_pseudonym, source_label
from components.readers import ImageDecodeError
from components.readers.base import check_array, short_reason
from components.readers.dicom import header_value, is_keyword

__all__ = ["ingest_source"]

logger = logging.getLogger(__name__)

@dataclass
class _Sink:
    """Collects manifest rows, sources and problems, one image at a time."""

    out_dir: Path
    salt: str
    sources: Any  # csv writer of the sources file
    src: Path = Path(".")  # the source folder: its path is taken out of every problem's reason
    allowed_labels: frozenset[str] | None = None
    problems: list[dict[str, str]] = field(default_factory=list)
    image_ids: set[str] = field(default_factory=set)
    rows: ManifestRows = field(default_factory=ManifestRows)
    shards: int = 0

    def problem(self, file: str, reason: str, position: bool = False) -> None:
        """A skipped input: the file at `file` (relative to the source), or a `position` such as ``labels.csv:12``."""
        name = file if position else file_pseudonym(file, self.salt)
        reason = reason if position else reason.replace(str(self.src / file), name).replace(file, name)
        self.problems.append({"file": name, "reason": reason.replace(str(self.src), "<source>")})

    def reserve_shards(self, n: int) -> int:
        first = self.shards
        self.shards += n
        return first

    def label_allowed(self, file: str, label: str, position: bool = False) -> bool:
        if self.allowed_labels is not None and label not in self.allowed_labels:
            self.problem(file, f"label {label!r} is not one of ingest.class_names", position)
            return False
        return True

    def add(self, file: str, columns: dict[str, Any], *, label: str, split: str | None, patient_id: str,
            image_id: str, position: bool = False) -> None:
        """One manifest row: the file's `columns`, ids, label and split; sources.csv names the file (its pseudonym or `position`)."""
        while image_id in self.image_ids:  # e.g. the same SOP instance copied twice
            image_id = pseudonym(image_id + "/dup", self.salt)
        self.image_ids.add(image_id)
        self.rows.append({**columns, "image_id": image_id, "patient_id": patient_id, "label": label, "split": split})
        self.sources.writerow([image_id, file if position else file_pseudonym(file, self.salt)])


class _Progress:
    """A rich progress bar (counts only, never file names), or nothing."""

    def __init__(self, bar: Any = None, task: Any = None):
        self._bar, self._task = bar, task

    def grow(self, n: int) -> None:
        """n more steps to come (work is discovered in phases: headers, files, npz splits)."""
        if self._bar is not None:
            task = next(t for t in self._bar.tasks if t.id == self._task)
            self._bar.update(self._task, total=(task.total or 0) + n)

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


@contextlib.contextmanager
def _progress(show: bool, description: str) -> Iterator[_Progress]:
    if not show:
        yield _Progress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as bar:
        yield _Progress(bar, bar.add_task(description, total=None))


def ingest_source(source: str | Path, out_dir: Path, cfg: IngestConfig, salt: str,
                  show_progress: bool = False, label: str | None = None) -> IngestedDataset:
    """Ingest a source into ``out_dir`` (see the module docstring for kinds and outputs).

    Streams: pixels go to shard files as they are decoded, by ``cfg.workers`` processes; memory
    holds compact manifest rows, not images. Bad inputs (corrupt, truncated or empty files,
    non-images, missing files or label rows, labels outside ``cfg.class_names``, NaN pixels, burned-in
    DICOM, files at a burned-in text risk the settings do not handle, 4D NIfTI, files declaring more
    than ``cfg.limits``, any file a reader fails on) are skipped and listed in problems.json; constant images,
    duplicates and split leaks are kept for validate to flag. Nothing identifying is logged.

    Args:
        source: a folder or a ``.npz`` path (resolve ``medmnist:<name>`` with `resolve_medmnist`).
        out_dir: where manifest.parquet, images/, sources.csv and problems.json go; must not be
            inside the source. A previous ingest's outputs there are replaced.
        cfg: the ingest section of params.yaml.
        salt: secret key of the pseudonyms (same salt, same pseudonyms).
        show_progress: draw a progress bar (counts only, no file names).
        label: the source's name in the record and in messages (default: `source_label`).

    Returns:
        The IngestedDataset record.

    Raises:
        ValueError: unsupported or missing source (the message lists what is supported), an empty
            salt, a labels.csv without the needed columns, an unreadable folder, or nothing usable
            left after skipping; the message names the source by its label, never its path.
    """
    if not salt:
        raise ValueError("ingest needs a non-empty salt: pseudonyms without a secret key can be reversed")
    label = label or source_label(str(source), salt)
    try:
        return _ingest(source, Path(out_dir), cfg, salt, show_progress, label)
    except (ValueError, OSError) as exc:
        message = str(exc).replace(str(Path(source)), label)
        if is_labels_file(Path(source)):  # its folder's path too
            message = message.replace(str(Path(source).parent), label)
        raise ValueError(message) from None


def _ingest(source: str | Path, out_dir: Path, cfg: IngestConfig, salt: str, show_progress: bool,
            label: str) -> IngestedDataset:
    if isinstance(source, str) and source.startswith(MEDMNIST_PREFIX):
        raise ValueError(f"{source}: resolve medmnist:<name> to its .npz path (resolve_medmnist) before ingest; "
                         f"supported: {'; '.join(SUPPORTED_SOURCES)}")
    src = Path(source)
    if not src.exists():
        raise ValueError(f"{src}: source does not exist; supported: {'; '.join(SUPPORTED_SOURCES)}")
    kind, listed = detect_source(src)  # a labelled folder's files: walked once
    src, labels_file = (src.parent, src.name) if is_labels_file(src) else (src, LABELS_FILE)
    _check_out_dir(src, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "images", ignore_errors=True)  # a previous ingest's outputs, never another's
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)

    with open(out_dir / SOURCES_FILE, "w", newline="") as sources_file, \
            _progress(show_progress, f"ingest {kind}") as progress:
        writer = csv.writer(sources_file, lineterminator="\n")
        writer.writerow(["image_id", "source"])
        sink = _Sink(out_dir, salt, writer, src,
                     allowed_labels=frozenset(cfg.class_names) if cfg.class_names else None)
        if kind in ("dicom", "nifti", "video", "audio"):
            _ingest_labelled_folder(src, labels_file, listed, cfg, sink, progress)
        elif kind in ("png", "audio-folders"):
            _ingest_class_folders(src, cfg, sink, progress)
        else:
            _ingest_npz(src, cfg, sink, progress)

    (out_dir / PROBLEMS_FILE).write_text(json.dumps(sink.problems, indent=1) + "\n")
    return _write_manifest(sink, label, kind, cfg)


def _write_manifest(sink: _Sink, source: str, kind: str, cfg: IngestConfig) -> IngestedDataset:
    manifest = sink.rows.frame()
    if manifest.empty:
        first = f"; first: {sink.problems[0]['file']}: {sink.problems[0]['reason']}" if sink.problems else ""
        raise ValueError(f"{source}: no usable images ({len(sink.problems)} problems{first})")
    class_names = tuple(cfg.class_names) if cfg.class_names else order_class_names(manifest["label"].astype(str))
    # The class order travels with the manifest (parquet metadata): prepare indexes labels by it.
    manifest.attrs[CLASS_NAMES_ATTR] = list(class_names)
    if "frames" in manifest:  # how its clips were sampled travels with them: the model serves clips the same way
        manifest.attrs[CLIP_SPEC_ATTR] = cfg.video.model_dump(mode="json")
    if "sample_rate" in manifest:  # recordings: the rate their samples are stored at
        manifest.attrs[AUDIO_RATE_ATTR] = cfg.audio.sample_rate
    manifest_path = sink.out_dir / MANIFEST_FILE
    manifest.to_parquet(manifest_path, index=False)
    result = IngestedDataset(
        manifest=manifest_path,
        source=source,
        kind=kind,
        num_images=len(manifest),
        num_patients=int(manifest["patient_id"].nunique()),
        class_names=class_names,
        problems=tuple(sink.problems),
    )
    logger.info("ingest %s: %d images, %d patients, %d classes, %d problems", kind, result.num_images,
                result.num_patients, len(class_names), len(sink.problems))
    return result


def _check_out_dir(src: Path, out_dir: Path) -> None:
    s, o = src.resolve(), out_dir.resolve()
    if src.is_dir() and (o == s or s in o.parents):
        raise ValueError(f"{out_dir}: out_dir is inside the source {src}; ingest never writes into raw data")
    if o / "images" == s or (o / "images") in s.parents:
        raise ValueError(f"{src}: source lies inside {out_dir / 'images'}, which ingest replaces")


# An accepted file: (file, label, split, labels.csv patient_id, its labels.csv subgroup columns).
_Accepted = tuple[str, str, str | None, str, dict[str, str]]


def _ingest_labelled_folder(src: Path, labels_file: str, files: list[str], cfg: IngestConfig, sink: _Sink,
                            progress: _Progress) -> None:
    """`files`: the folder's files some reader claims (`detect_source`)."""
    rows = read_labels(src / labels_file, cfg.key_column)
    by_key, unreadable = _files_by_key(src, files, cfg.key_column, progress)
    accepted, used = _match_rows(src, rows, by_key, cfg.key_column, sink)
    progress.grow(len(accepted))
    results = decode_files(src, [a[0] for a in accepted], cfg, sink.out_dir, sink.salt, sink.reserve_shards, progress.step)
    for (rel, label, split, patient_csv, subgroups), result in zip(accepted, results, strict=True):
        if result.columns is None:
            sink.problem(rel, result.problem)
            continue
        columns = {**result.columns, **subgroups}
        patient = pseudonym(patient_csv, sink.salt) if patient_csv else \
            columns.get("patient_id") or pseudonym(rel, sink.salt)
        sink.add(rel, columns, label=label, split=split, patient_id=patient,
                 image_id=columns.get("image_id") or pseudonym(rel, sink.salt))
    for rel in files:
        if rel not in used:
            sink.problem(rel, unreadable.get(rel, "no row in labels.csv"))


def _files_by_key(src: Path, files: list[str], key: str, progress: _Progress) -> tuple[dict[str, str], dict[str, str]]:
    """({key value: file}, {file: why its header is unreadable}); the key is ``path`` or a DICOM keyword."""
    if key == "path":
        return {p: p for p in files}, {}
    if not is_keyword(key):
        raise ValueError(f"{src / 'labels.csv'}: key column {key!r} is neither 'path' nor a DICOM keyword")
    by_key: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    progress.grow(len(files))
    for rel in files:  # header pass: which file carries which key value
        try:
            value = header_value(src / rel, key)
        except Exception as exc:  # noqa: BLE001 - any unreadable header is a reported problem
            unreadable[rel] = f"unreadable DICOM header: {short_reason(exc)}"
            value = ""
        if value and value not in by_key:
            by_key[value] = rel
        progress.step()
    return by_key, unreadable


def _match_rows(src: Path, rows: list[LabelRow], by_key: dict[str, str], key: str,
                sink: _Sink) -> tuple[list[_Accepted], set[str]]:
    """The rows that name a usable file once, with a label and a valid split; every other row is a problem."""
    accepted: list[_Accepted] = []
    used: set[str] = set()
    for line, row in rows:
        ref = row.get(key, "")
        where = f"labels.csv:{line}"
        if key == "path":
            normalised = relative_file(ref)
            if normalised is None:
                sink.problem(where, "path is empty, absolute or leaves the source folder", position=True)
                continue
            ref = where = normalised
        found = by_key.get(ref) if ref else None
        if found is None:
            if key == "path":
                reason = "listed in labels.csv but the file is missing" if not (src / ref).is_file() \
                    else "listed in labels.csv but not an image file (hidden or unsupported suffix)"
                sink.problem(ref, reason)
            else:
                sink.problem(where, f"no file has this row's {key}", position=True)
            continue
        if found in used:
            sink.problem(found, "listed more than once in labels.csv; the first row is kept")
            continue
        used.add(found)
        label = row.get("label", "")
        if not label:
            sink.problem(found, "empty label in labels.csv")
            continue
        split = row.get("split", "").lower() or None
        if split is not None and split not in SPLITS:
            sink.problem(found, f"split {split!r} is not one of {', '.join(SPLITS)}")
            continue
        if sink.label_allowed(found, label):
            subgroups = {c: row[c] for c in SUBGROUP_COLUMNS if row.get(c)}
            accepted.append((found, label, split, row.get("patient_id", ""), subgroups))
    return accepted, used


def _ingest_class_folders(src: Path, cfg: IngestConfig, sink: _Sink, progress: _Progress) -> None:
    top = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_layout = bool(top) and all(name in SPLITS for name in top)
    accepted: list[tuple[str, str, str | None]] = []
    for rel in walk_files(src):
        if not in_class_folders(rel):
            continue
        parts = PurePosixPath(rel).parts
        split = parts[0] if split_layout else None
        class_parts = parts[1:] if split_layout else parts
        if len(class_parts) < 2:
            sink.problem(rel, "image is not inside a class folder")
        elif sink.label_allowed(rel, class_parts[0]):
            accepted.append((rel, class_parts[0], split))
    progress.grow(len(accepted))
    results = decode_files(src, [a[0] for a in accepted], cfg, sink.out_dir, sink.salt, sink.reserve_shards, progress.step)
    for (rel, label, split), result in zip(accepted, results, strict=True):
        if result.columns is None:
            sink.problem(rel, result.problem)
            continue
        name = PurePosixPath(rel).stem
        patient_src = name.split("_", 1)[0] if cfg.patient_from_filename_prefix else rel
        sink.add(rel, result.columns, label=label, split=split, patient_id=pseudonym(patient_src, sink.salt),
                 image_id=pseudonym(rel, sink.salt))


def _ingest_npz(src: Path, cfg: IngestConfig, sink: _Sink, progress: _Progress) -> None:
    """MedMNIST npz. MedMNIST publishes no patient ids, so every image is its own patient
    (pseudonym of ``<split>/<index>``): patient-level leakage inside its official splits cannot be
    checked (duplicate pixels across splits can, by validate), and the given split is kept."""
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{src}: not a readable .npz file ({short_reason(exc)}); "
                         f"supported: {'; '.join(SUPPORTED_SOURCES)}") from None
    with zf:
        present = archive_splits(zf)
        if not present:
            raise ValueError(f"{src}: no train/val/test _images arrays in this .npz; "
                             f"supported: {'; '.join(SUPPORTED_SOURCES)}")
        for split in present:
            try:
                labels, blocks = open_split(zf, split, max(1, cfg.shard_size))
            except SplitUnreadable as exc:
                sink.problem(split, str(exc), position=True)
                continue
            progress.grow(len(labels))
            _ingest_npz_split(split, labels, blocks, sink, progress)


def _ingest_npz_split(split: str, labels: np.ndarray, blocks: Iterator[np.ndarray], sink: _Sink,
                      progress: _Progress) -> None:
    """One split's images, a shard per block; a block that fails to read ends the split with a problem."""
    index = 0
    try:
        for block in blocks:
            with ShardWriter(sink.out_dir, sink.reserve_shards(1)) as writer:
                for img in block:
                    progress.step()
                    item = f"{split}_images[{index}]"
                    label = str(int(labels[index]))
                    try:
                        arr = check_array(img)
                    except ImageDecodeError as exc:
                        sink.problem(item, str(exc), position=True)
                    else:
                        if sink.label_allowed(item, label, position=True):
                            sink.add(item, writer.add(arr), label=label, split=split,
                                     patient_id=pseudonym(f"{split}/{index}", sink.salt),
                                     image_id=f"{split}-{index:06d}", position=True)
                    index += 1
    except Exception as exc:  # noqa: BLE001 - zip, zlib and numpy errors alike
        sink.problem(split, f"{split}_images truncated or corrupt after {index} images "
                                        f"({short_reason(exc)})", position=True)
