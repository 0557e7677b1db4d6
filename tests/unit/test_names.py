"""Names that carry no path: source labels, file pseudonyms, the local map, path identifiers for the PHI scan."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.privacy.names import SourceNames, file_pseudonym, path_identifiers, project_words, source_label
from components.privacy.phi import scan_artifacts
from tests.conftest import PROJECT

pytestmark = pytest.mark.unit
SALT = "names-salt"


def _export(root: Path) -> Path:
    (root / "DOE_John_123456").mkdir(parents=True)
    (root / "DOE_John_123456" / "IM000001.dcm").write_bytes(b"x")
    (root / "labels.csv").write_text("path,label\nDOE_John_123456/IM000001.dcm,lesion\nDOE_John_123456/gone.dcm,normal\n")
    return root


def test_labels_are_names_or_pseudonyms_never_paths(tmp_path: Path) -> None:
    src = _export(tmp_path / "DOE_John_123456_export")
    label = source_label(str(src), SALT)
    assert label.startswith("dataset-") and "DOE" not in label and label == source_label(str(src), SALT)
    assert source_label(str(src), "another salt") != label
    assert source_label(str(src), SALT, "chest-ct") == "chest-ct"
    assert source_label("embedded", SALT) == "embedded" and source_label("medmnist:pathmnist", SALT) == "medmnist:pathmnist"
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"")
    assert source_label(str(tmp_path / "pneumoniamnist.npz"), SALT) == "pneumoniamnist"  # a public dataset's file
    with pytest.raises(ValueError, match="lower-case"):
        source_label(str(src), SALT, "Doe John")


def test_the_local_map_redacts_and_reveals(tmp_path: Path) -> None:
    src = _export(tmp_path / "export")
    names = SourceNames(tmp_path / "state" / "source_names.json")
    names.register("dataset-0123456789", src, SALT)
    assert (tmp_path / "state" / "source_names.json").stat().st_mode & 0o777 == 0o600
    again = SourceNames(tmp_path / "state" / "source_names.json")  # read back from the file
    pseudo, missing = file_pseudonym("DOE_John_123456/IM000001.dcm", SALT), file_pseudonym("DOE_John_123456/gone.dcm", SALT)
    text = f"[Errno 2] No such file: '{src}/DOE_John_123456/gone.dcm'; DOE_John_123456/IM000001.dcm unreadable; {src} empty"
    redacted = again.redact(text)
    assert "DOE" not in redacted and str(src) not in redacted
    assert missing in redacted and pseudo in redacted and "dataset-0123456789 empty" in redacted
    assert again.reveal(redacted).count(f"({src}/DOE_John_123456/") == 2 and f"dataset-0123456789 ({src})" in again.reveal(redacted)


def test_path_components_are_sought_as_whole_words(tmp_path: Path) -> None:
    src = _export(tmp_path / "Roe_Richard_export")
    parts = path_identifiers(src, ["DOE_John_123456/IM000001.dcm", "lesion/case-000/1.dcm", "train/x.dcm"],
                             public=["lesion", "dataset-0123456789"])
    assert {"DOE_John_123456", "IM000001.dcm", "IM000001", "case-000", "Roe_Richard_export"} <= parts
    assert not parts & {"lesion", "train", "1.dcm", "x.dcm", "labels.csv"}
    out = tmp_path / "out"
    out.mkdir()
    (out / "clean.txt").write_text("site case-0001 export2 xDOE_John_123456")  # longer words: not the components
    (out / "leak.csv").write_text("image_id,source\nabc,DOE_John_123456/IM000001.dcm\n")
    scan = scan_artifacts([out], {"source_paths": sorted(parts)}, relative_to=out)
    assert {f.file for f in scan.findings} == {"leak.csv"}


def test_folders_named_like_the_pipelines_own_words_are_not_sought(tmp_path: Path) -> None:
    """A recordings folder called ``audio`` or ``patients`` is what reports and summaries say anyway
    (a run would fail on its own words); a patient's folder is still sought."""
    words = project_words(PROJECT)
    assert {"audio", "patients", "frames"} <= words and not {"doe_john_123456", "john", "smith"} & words
    parts = path_identifiers(tmp_path / "export", ["audio/a0001.wav", "patients/DOE_John_123456/IM000001.dcm"],
                             public=words)
    assert "DOE_John_123456" in parts and not {"audio", "patients"} & parts
