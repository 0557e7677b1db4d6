"""phi: prove that a run stored no patient identifiers, by scanning its artifacts for known ones.

Every run's scan looks for its source's identifiers (flows.datasets.source_identifiers: the header
values de-identification removes, the path components of a source named by its path, and, for the
embedded default cohort, the fake identifiers it lists in ``identifiers.json``);
`scan_artifacts` looks for every one of them in every file of a run's artifacts, case-insensitively,
in what a reader of each file would see:

* zip containers (image shards, torch checkpoints) member by member, gzip decompressed;
* Parquet as its decoded column values (its pages are compressed, so raw bytes could hide a value);
* SQLite databases as every table's rows (long values span pages) and as the raw pages (free pages
  keep deleted values), both read through SQLite: a database this process has open must never be
  opened as a plain file, since closing that file would drop SQLite's locks on it (pass it as
  `databases`);
* ``.npy`` arrays of strings as text (numpy stores them as UTF-32);
* anything else as raw bytes; and every file's path, since a file name can carry a name too.

Names are also sought in their other spellings (``LAST^FIRST`` as ``LAST FIRST`` and
``FIRST LAST``), dates also as ``YYYY-MM-DD``; an identifier made of digits only must stand alone
(not inside a longer number), so that a probability printed with many decimals is no finding.
Findings name the file and the identifier's kind (``patient_names``...), never its value, so the
scan's own output leaks nothing.

A memo file (optional) lists the sha256 of contents found clean by this scanner for these
identifiers; such a content is not decoded again (its path still is checked), which makes an
unchanged re-run's scan cost a hash per file. It holds hashes only, never a finding.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import re
import sqlite3
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.data.artifacts import read_keyed_json, write_json_atomically

MIN_LENGTH = 4  # shorter identifiers would match by chance
# Kinds sought as whole words (no letter or digit on either side): a folder or file name such as
# ``case-000`` must not be found inside ``case-0001``, nor ``site-a`` in the pseudonym ``site-a3f...``.
WHOLE_WORD_KINDS = frozenset({"source_paths"})
_MAX_DEPTH = 2  # containers inside containers


@dataclass(frozen=True)
class PhiFinding:
    """An identifier of kind `kind` found in `file` (at `where`: a member, table or column)."""

    file: str
    kind: str
    where: str = ""


@dataclass(frozen=True)
class PhiScan:
    files: int
    bytes: int
    identifiers: int
    findings: tuple[PhiFinding, ...]

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "files": self.files, "bytes": self.bytes, "identifiers": self.identifiers,
                "findings": [asdict(f) for f in self.findings]}


def load_identifiers(path: Path) -> dict[str, list[str]]:
    """``identifiers.json``: identifier kind -> the values of that kind."""
    raw = json.loads(Path(path).read_text())
    return {str(kind): [str(v) for v in values if str(v).strip()] for kind, values in raw.items()}


def _variants(value: str) -> set[str]:
    out = {value.strip()}
    if "^" in value:  # DICOM person name: family^given^middle^prefix^suffix
        parts = [p for p in value.split("^") if p]
        out |= {" ".join(parts), " ".join(parts[1:2] + parts[:1])}
    if re.fullmatch(r"\d{8}", value):
        out.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    return {v for v in out if len(v) >= MIN_LENGTH}


class _Needles:
    """Every identifier spelling, lower-cased, with its kind."""

    def __init__(self, identifiers: Mapping[str, Sequence[str]]):
        self.items = sorted({(v.lower().encode(), kind) for kind, values in identifiers.items()
                             for value in values for v in _variants(value)})

    def digest(self) -> str:
        """sha256 of these spellings and of this scanner's code: what a memo of clean contents holds for."""
        digest = hashlib.sha256(Path(__file__).read_bytes())
        for needle, kind in self.items:
            digest.update(hashlib.sha256(needle + b"\0" + kind.encode()).digest())
        return digest.hexdigest()

    def kinds_in(self, blob: bytes) -> set[str]:
        low = blob.lower()
        return {kind for needle, kind in self.items if _occurs(low, needle, kind in WHOLE_WORD_KINDS)}


def _occurs(blob: bytes, needle: bytes, whole_word: bool = False) -> bool:
    start = blob.find(needle)
    if not needle.isdigit() and not whole_word:
        return start >= 0
    while start >= 0:  # digits only: not part of a longer number; a whole word: no letter or digit around it
        before = blob[start - 1:start]
        after = blob[start + len(needle):start + len(needle) + 1]
        if whole_word:
            if not before.isalnum() and not after.isalnum():
                return True
        elif not (before.isdigit() or before == b".") and not after.isdigit():
            return True
        start = blob.find(needle, start + 1)
    return False


def _views(name: str, data: bytes, depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) a reader of this content would see."""
    yield "", data
    if depth >= _MAX_DEPTH:
        return
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for member in zf.namelist():
                    for where, blob in _views(member, zf.read(member), depth + 1):
                        yield f"{member}{'/' + where if where else ''}", blob
                    yield member, member.encode()
        except (zipfile.BadZipFile, OSError, ValueError):
            pass
    elif data.startswith(b"\x1f\x8b"):
        try:
            yield from _views(name, gzip.decompress(data), depth + 1)
        except (OSError, EOFError):
            pass
    elif data.startswith(b"PAR1") and data.endswith(b"PAR1"):
        yield from _parquet_values(data)
    elif data.startswith(b"\x93NUMPY"):
        yield from _npy_text(data)


def _npy_text(data: bytes) -> Iterator[tuple[str, bytes]]:
    """A .npy of strings holds them as UTF-32: decoded, they are text like any other."""
    import numpy as np

    from components.readers.npy import read_npy_header

    try:
        _, _, dtype = read_npy_header(io.BytesIO(data))
        if dtype.kind not in "US":  # numbers (pixels) hold no text
            return
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return
    yield "strings", "\n".join(map(str, arr.ravel().tolist())).encode("utf-8", "replace")


def _parquet_values(data: bytes) -> Iterator[tuple[str, bytes]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - an unreadable file is still scanned as bytes
        return
    for column in table.column_names:
        values = table.column(column).to_pylist()
        yield f"column {column}", "\n".join(map(str, values)).encode("utf-8", "replace")


def _sqlite_views(path: Path) -> list[tuple[str, bytes]]:
    """A consistent in-memory copy of a database (SQLite's backup API, committed WAL content
    included): its raw pages and every table's rows."""
    views: list[tuple[str, bytes]] = []
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as copy:
            with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as source:
                source.backup(copy)
            views.append(("pages", copy.serialize()))
            tables = [r[0] for r in copy.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                rows = copy.execute(f'SELECT * FROM "{table}"').fetchall()  # table names come from the schema
                views.append((f"table {table}", "\n".join(map(repr, rows)).encode("utf-8", "replace")))
    except sqlite3.Error as exc:
        views.append(("unreadable database", str(exc).encode()))
    return views


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        path = Path(path)
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def scan_artifacts(paths: Iterable[Path], identifiers: Mapping[str, Sequence[str]], *,
                   databases: Iterable[Path] = (), allowed_files: Iterable[Path] = (),
                   texts: Mapping[str, str] | None = None, relative_to: Path | None = None,
                   memo_file: Path | None = None) -> PhiScan:
    """Look for every identifier in every file under `paths` (folders are walked) and in `texts`.

    Args:
        paths: files and folders to scan; missing ones are skipped.
        databases: SQLite files, read only through SQLite (see the module docstring); their
            -wal and -shm files are skipped where a walk meets them.
        identifiers: kind -> values, as in ``identifiers.json``.
        allowed_files: files whose exact content may hold identifiers (the cohort generator's own
            source defines the fake site names): a scanned file with the same sha256 is skipped.
        texts: named in-memory artifacts (e.g. a registry dump from a database server).
        relative_to: findings name files relative to this folder where they lie inside it.
        memo_file: JSON memo of clean contents (module docstring): read when it was written for these
            identifiers by this code, then rewritten with the clean contents of this scan.

    Returns:
        The scan: files and bytes read, and one finding per (file, where, kind).
    """
    needles = _Needles(identifiers)
    allowed = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in allowed_files if Path(p).is_file()}
    live = [Path(p) for p in databases if Path(p).is_file()]
    skip = {q.resolve() for db in live for q in (db, *(db.with_name(db.name + x) for x in ("-wal", "-shm", "-journal")))}
    findings: set[PhiFinding] = set()
    files = total = 0
    scanner = needles.digest()
    memo = read_keyed_json(memo_file, scanner)
    known_clean = set(memo["clean"]) if memo is not None else set()
    clean: set[str] = set()

    def shown(path: Path) -> str:
        return path.relative_to(relative_to).as_posix() if relative_to and path.is_relative_to(relative_to) else str(path)

    def record(name: str, views: Iterable[tuple[str, bytes]]) -> None:
        for where, blob in views:
            findings.update(PhiFinding(name, kind, where) for kind in needles.kinds_in(blob))

    for path in _files(paths):
        if path.resolve() in skip:
            continue
        data = path.read_bytes()
        if (content := hashlib.sha256(data).hexdigest()) in allowed:
            continue
        files += 1
        total += len(data)
        before = len(findings)
        record(shown(path), [("file name", shown(path).encode())])
        if content not in known_clean:
            sqlite_views = _sqlite_views(path) if data.startswith(b"SQLite format 3\x00") else []
            record(shown(path), [*_views(path.name, data), *sqlite_views])
        if len(findings) == before:
            clean.add(content)
    for db in live:
        views = _sqlite_views(db)
        files += 1
        total += sum(len(blob) for where, blob in views if where == "pages")
        record(shown(db), [("file name", shown(db).encode()), *views])
    for name, text in (texts or {}).items():
        blob = text.encode("utf-8", "replace")
        files += 1
        total += len(blob)
        record(name, [("", blob)])
    if memo_file is not None:  # only this scan's clean contents: the memo stays the size of what is there now
        write_json_atomically(memo_file, {"key": scanner, "clean": sorted(clean)})
    ordered = tuple(sorted(findings, key=lambda f: (f.file, f.where, f.kind)))
    return PhiScan(files=files, bytes=total, identifiers=len(needles.items), findings=ordered)

