"""The PHI scanner finds planted identifiers wherever a reader would see them, and only there."""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from components.privacy.phi import load_identifiers, scan_artifacts

IDS = {
    "patient_names": ["ABERNATHY^AVERY"],
    "patient_ids": ["MRN1234567"],
    "birth_dates": ["19650312"],
    "institution_names": ["St. Aldric General Hospital"],
}


def _kinds(scan) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in scan.findings:
        found.setdefault(f.file, set()).add(f.kind)
    return found


def test_planted_identifiers_are_found_in_every_container(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    # Parquet pages are compressed: the value is invisible in the raw bytes, visible to a reader.
    pd.DataFrame({"note": ["x" * 50 + "Avery Abernathy" + "y" * 50] * 200}).to_parquet(
        root / "m.parquet", compression="gzip", write_statistics=False)
    assert b"Avery Abernathy" not in (root / "m.parquet").read_bytes()
    buf = io.BytesIO()
    np.save(buf, np.array(["MRN1234567"]))
    with zipfile.ZipFile(root / "shard.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.npy", buf.getvalue())
    (root / "log.txt.gz").write_bytes(gzip.compress(b"born 1965-03-12"))
    with sqlite3.connect(root / "registry.db") as db:  # a value longer than a page spans overflow pages
        db.execute("CREATE TABLE runs (summary TEXT)")
        db.execute("INSERT INTO runs VALUES (?)", ("z" * 4090 + "st. aldric general hospital" + "z" * 9000,))
    (root / "ABERNATHY AVERY.png").write_bytes(b"\x89PNG")
    (root / "clean.json").write_text(json.dumps({"auc": 0.1965031234, "p": [0.19650312], "id": "19650312345"}))

    with sqlite3.connect(tmp_path / "live.db") as live:  # open here: read only through SQLite
        live.execute("PRAGMA journal_mode=WAL")
        live.execute("CREATE TABLE t (v TEXT)")
        live.execute("INSERT INTO t VALUES ('ref MRN1234567')")
        live.commit()
        scan = scan_artifacts([root, tmp_path / "absent"], IDS, databases=[tmp_path / "live.db"], relative_to=tmp_path)
        live.execute("INSERT INTO t VALUES ('still writable')")  # its locks survived the scan
    assert not scan.clean and scan.files == 7
    assert _kinds(scan) == {
        "run/m.parquet": {"patient_names"},
        "run/shard.npz": {"patient_ids"},
        "run/log.txt.gz": {"birth_dates"},
        "run/registry.db": {"institution_names"},
        "live.db": {"patient_ids"},
        "run/ABERNATHY AVERY.png": {"patient_names"},
    }
    where = {(f.file, f.where) for f in scan.findings}
    assert ("run/m.parquet", "column note") in where and ("run/registry.db", "table runs") in where
    # The scan's own output never carries a value, only kinds and places.
    dumped = json.dumps(scan.to_dict())
    assert not any(v.lower() in dumped.lower() for values in IDS.values() for v in values)
    assert "MRN1234567" not in dumped


def test_clean_artifacts_and_allowed_files(tmp_path: Path) -> None:
    (tmp_path / "generator.py").write_text('SITE = "St. Aldric General Hospital"\n')
    (tmp_path / "manifest.csv").write_text("patient_id,label\n1a2b3c4d5e6f7a8b,normal\n")
    (tmp_path / "ids.json").write_text(json.dumps(IDS))
    scan = scan_artifacts([tmp_path / "generator.py", tmp_path / "manifest.csv"], load_identifiers(tmp_path / "ids.json"),
                          allowed_files=[tmp_path / "generator.py"], texts={"registry dump": "('run', 'ok')"})
    assert scan.clean and scan.files == 2  # the allowed generator is skipped, the text dump counted
    leaked = scan_artifacts([tmp_path], IDS, texts={"registry dump": "('Avery Abernathy',)"})
    assert {f.file for f in leaked.findings} >= {"registry dump", str(tmp_path / "generator.py")}


def test_memo_skips_clean_contents_and_never_a_finding(tmp_path: Path, monkeypatch) -> None:
    import components.privacy.phi as phi

    root, memo = tmp_path / "run", tmp_path / "state" / "phi_clean.json"
    root.mkdir()
    (root / "clean.txt").write_text("auc 0.91")
    (root / "leak.txt").write_text("patient MRN1234567")
    first = scan_artifacts([root], IDS, memo_file=memo)
    assert _kinds(first) == {str(root / "leak.txt"): {"patient_ids"}}
    recorded = json.loads(memo.read_text())
    assert len(recorded["clean"]) == 1 and "MRN" not in memo.read_text(), "hashes of clean contents only"

    decoded: list[bytes] = []
    real_views = phi._views
    monkeypatch.setattr(phi, "_views", lambda name, data, depth=0: decoded.append(data) or real_views(name, data, depth))
    again = scan_artifacts([root], IDS, memo_file=memo)
    assert again.findings == first.findings and again.files == 2
    assert decoded == [b"patient MRN1234567"], "the clean content was not decoded again; the leaking one was"

    # A clean content under a leaking name is still a finding: the path is always checked.
    (root / "clean.txt").rename(root / "MRN1234567.txt")
    renamed = scan_artifacts([root], IDS, memo_file=memo)
    assert str(root / "MRN1234567.txt") in _kinds(renamed)
    # Other identifiers (or another scanner) invalidate the memo: everything is decoded again.
    decoded.clear()
    scan_artifacts([root], {"patient_ids": ["OTHER99999"]}, memo_file=memo)
    assert len(decoded) == 2
