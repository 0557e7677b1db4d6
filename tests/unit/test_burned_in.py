"""Files at risk of burned-in text (components.privacy.burned_in): refused before decoding unless the
dataset's settings accept the risk or, for clips, mask it; the manifest and the report say which."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydantic
import pydicom
import pytest

from components.config import default_params
from components.data.manifest import read_manifest
from components.demo.cine import cine_bytes
from components.privacy.burned_in import BurnedInPolicy, BurnedInRisk, Risk, burned_in_risk
from components.stages.ingest import ingest_source
from components.stages.validate import validate_manifest
from tests.conftest import problems_by_file
from tests.images import dicom_bytes, grey_image, jpeg_bytes, png_bytes
from tests.videos import sweep_frames, video_bytes

pytestmark = pytest.mark.unit
SALT = "unit-test-salt"


def _dicom(modality: str, burned: str | None, uid: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(grey_image(seed=len(uid)).astype(np.int16))))
    ds.Modality, ds.SOPInstanceUID = modality, uid
    if burned is not None:
        ds.BurnedInAnnotation = burned
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _source(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *[(name, "ab"[k % 2]) for k, name in enumerate(files)]])
    return root


def _ingest(src: Path, out: Path, **ingest: object):
    return ingest_source(src, out, default_params(ingest={"workers": 1, **ingest}).ingest, SALT)


def test_risk_is_read_from_content_not_name() -> None:
    assert burned_in_risk(png_bytes(grey_image().astype(np.uint8))) == Risk("PNG", clip=False)
    assert burned_in_risk(jpeg_bytes(grey_image().astype(np.uint8))) == Risk("JPEG", clip=False)
    assert burned_in_risk(video_bytes(sweep_frames(8, 32, 32))) == Risk("VIDEO", clip=True)
    assert burned_in_risk(_dicom("US", None, "1.2.3")) == Risk("US", clip=False)
    assert burned_in_risk(cine_bytes(sweep_frames(8, 16, 16), fps=10, extra={"BurnedInAnnotation": None})) == Risk("US", clip=True)
    for safe in (_dicom("CT", None, "1.2.4"), _dicom("US", "NO", "1.2.5"), cine_bytes(sweep_frames(8, 16, 16), fps=10), b"junk"):
        assert burned_in_risk(safe) is None
    with pytest.raises(BurnedInRisk, match=r"accept_burned_in_risk: \[VIDEO\], or an ingest.video.mask"):
        BurnedInPolicy().judge(video_bytes(sweep_frames(8, 32, 32)))
    with pytest.raises(pydantic.ValidationError, match="unknown burned-in text risk"):
        default_params(ingest={"accept_burned_in_risk": ["GIF"]})


def test_still_images_at_risk_are_refused_unless_accepted(tmp_path: Path) -> None:
    """PNG/JPEG and US/SC/XA/OT DICOM without BurnedInAnnotation NO are refused before decoding unless
    ingest.accept_burned_in_risk names their risk; the accepted ones carry it in the manifest."""
    files = {"ct.dcm": _dicom("CT", None, "1.2.0"), "us.dcm": _dicom("US", None, "1.2.1"),
             "us_clean.dcm": _dicom("US", "NO", "1.2.2"), "sc.dcm": _dicom("SC", None, "1.2.3"),
             "photo.png": png_bytes(np.full((16, 16), 9, np.uint8)),
             "renamed.dcm": png_bytes(grey_image(seed=5).astype(np.uint8))}  # a PNG by content, whatever its name
    src = _source(tmp_path / "src", files)
    refused = _ingest(src, tmp_path / "out")
    reasons = problems_by_file(refused.problems, files, SALT)
    assert set(reasons) == {"us.dcm", "sc.dcm", "photo.png", "renamed.dcm"}
    assert "ingest.accept_burned_in_risk: [US]" in reasons["us.dcm"] and "[PNG]" in reasons["renamed.dcm"]
    assert "mask" not in reasons["us.dcm"]  # a still image: no clip mask covers it
    assert refused.num_images == 2 and "burned_in_risk" not in read_manifest(refused.manifest)

    accepted = _ingest(src, tmp_path / "out2", accept_burned_in_risk=["us", "PNG"])
    assert set(problems_by_file(accepted.problems, files, SALT)) == {"sc.dcm"} and accepted.num_images == 5
    assert sorted(read_manifest(accepted.manifest)["burned_in_risk"].dropna()) == ["PNG", "PNG", "US"]
    report = validate_manifest(accepted.manifest, default_params().validate_, tmp_path / "report", list(accepted.problems))
    page = report.report_html.read_text()
    assert "3 file(s) that may carry burned-in text accepted by ingest.accept_burned_in_risk (PNG: 2, US: 1)" in page
    assert "ingest.accept_burned_in_risk: [SC]" in page  # and the refused one, with why


def test_clips_at_risk_are_taken_when_accepted_or_masked(tmp_path: Path) -> None:
    """Video containers and ultrasound cine without BurnedInAnnotation NO: refused by default, taken with
    VIDEO/US accepted, or with an ingest.video.mask region blacking out every frame (recorded as masked)."""
    files = {"a.mp4": video_bytes(sweep_frames(20, 48, 48)), "b.avi": video_bytes(sweep_frames(20, 48, 48), "mjpeg", "avi"),
             "c.dcm": cine_bytes(sweep_frames(12, 32, 32), fps=20, extra={"BurnedInAnnotation": None}),
             "d.dcm": cine_bytes(sweep_frames(12, 32, 32), fps=20)}  # BurnedInAnnotation NO: at no risk
    src = _source(tmp_path / "src", files)
    video = {"frames": 4, "size": 16, "mask": []}
    refused = _ingest(src, tmp_path / "out", video=video)
    reasons = problems_by_file(refused.problems, files, SALT)
    assert set(reasons) == {"a.mp4", "b.avi", "c.dcm"} and refused.num_images == 1
    assert "[VIDEO], or an ingest.video.mask region" in reasons["a.mp4"] and "[US], or an ingest.video.mask" in reasons["c.dcm"]

    masked = _ingest(src, tmp_path / "out2", video={**video, "mask": [[0, 0, 1, 0.15]]})
    assert masked.problems == () and masked.num_images == 4
    risks = read_manifest(masked.manifest)["burned_in_risk"]
    assert sorted(risks.dropna()) == ["US masked", "VIDEO masked", "VIDEO masked"]
    page = validate_manifest(masked.manifest, default_params().validate_, tmp_path / "report", []).report_html.read_text()
    assert "3 clip(s) that may carry burned-in text taken with ingest.video.mask" in page and "(US: 1, VIDEO: 2)" in page

    accepted = _ingest(src, tmp_path / "out3", video=video, accept_burned_in_risk=["VIDEO"])
    assert set(problems_by_file(accepted.problems, files, SALT)) == {"c.dcm"}
    assert sorted(read_manifest(accepted.manifest)["burned_in_risk"].dropna()) == ["VIDEO", "VIDEO"]
