"""Clips: real MP4, MOV, AVI and multi-frame DICOM cine decoded, sampled and masked; bad clips named."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import default_params
from components.data.manifest import read_manifest
from components.demo.cine import cine_bytes
from components.privacy.names import file_pseudonym
from components.readers import ClipSpec, DecodeLimits, ImageDecodeError, NotAClipModel, TooLarge, decode, decode_image
from components.readers.clips import sample_indices
from components.stages.ingest import ingest_source
from tests.videos import audio_only_mp4, faststart_mp4, sweep_frames, video_bytes

SALT = "unit-test-salt"
SPEC = ClipSpec(frames=8, size=32)
LIMITS = DecodeLimits(**default_params().ingest.limits.model_dump())  # what ingest reads with


def _bar_width(clip: np.ndarray) -> np.ndarray:
    """The white bar's width in each stored frame, as a fraction of the frame."""
    return (clip[:, clip.shape[1] // 2] > 127).mean(axis=1)


@pytest.mark.parametrize("codec, container, name", [
    ("libx264", "mp4", "h264"), ("mpeg4", "mp4", "mpeg4"), ("mjpeg", "avi", "mjpeg"), ("libx264", "mov", "h264"),
])
def test_containers_decode_sampled_resized_frames(codec: str, container: str, name: str) -> None:
    frames = sweep_frames(30, 64, 80)
    decoded = decode(video_bytes(frames, codec, container, fps=25), SALT, LIMITS, clip=SPEC)
    assert decoded.kind == "video"
    assert decoded.array.shape == (8, 32, 32) and decoded.array.dtype == np.uint8
    assert decoded.columns == {"frames": 30, "fps": 25.0, "duration_s": pytest.approx(1.2), "source_height": 64,
                               "source_width": 80, "codec": name}
    # Uniform sampling: frame k of the stored clip is source frame sample_indices(30, 8)[k].
    expected = np.array([(i + 1) / 30 for i in sample_indices(30, 8)])
    np.testing.assert_allclose(_bar_width(decoded.array), expected, atol=0.07)


def test_strided_sampling_keeps_the_motions_speed_and_falls_back_to_uniform() -> None:
    assert sample_indices(30, 8, stride=2) == [7, 9, 11, 13, 15, 17, 19, 21]  # a run of 15 frames, centred
    assert sample_indices(10, 8, stride=2) == sample_indices(10, 8)  # too short for the run: uniform
    strided = ClipSpec(8, 32, stride=2)
    mp4 = decode(video_bytes(sweep_frames(30, 64, 80), "libx264", "mp4", fps=25), SALT, LIMITS, clip=strided)
    np.testing.assert_allclose(_bar_width(mp4.array), [(i + 1) / 30 for i in range(7, 22, 2)], atol=0.07)
    cine = decode(cine_bytes(sweep_frames(20, 48, 40), fps=30, modality="US", syntax="explicit"), SALT, LIMITS,
                  clip=strided)
    np.testing.assert_allclose(_bar_width(cine.array), [(i + 1) / 20 for i in range(2, 17, 2)], atol=0.07)
    assert ClipSpec.from_dict({"frames": 8, "size": 32, "mask": []}).stride == 0  # a spec stored before strides
    assert ClipSpec.from_dict(strided.to_dict()) == strided


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg"])
def test_dicom_cine_in_each_transfer_syntax(syntax: str) -> None:
    frames = sweep_frames(20, 48, 40)
    data = cine_bytes(frames, fps=30, modality="US", syntax=syntax, patient_id="FAKE-77")
    decoded = decode(data, SALT, LIMITS, clip=SPEC)
    assert decoded.kind == "video" and decoded.array.shape == (8, 32, 32)
    assert decoded.columns["frames"] == 20 and decoded.columns["fps"] == 30.0
    assert decoded.columns["source_height"] == 48 and decoded.columns["duration_s"] == pytest.approx(20 / 30)
    assert "FAKE-77" not in map(str, decoded.columns.values()) and decoded.columns["modality"] == "US"
    expected = np.array([(i + 1) / 20 for i in sample_indices(20, 8)])
    np.testing.assert_allclose(_bar_width(decoded.array), expected, atol=0.07)


def test_colour_cine_and_mr_frame_time_vector() -> None:
    grey = sweep_frames(12, 32, 32)
    rgb = decode(cine_bytes(np.stack([grey] * 3, axis=-1), fps=20, syntax="jpeg"), SALT, LIMITS, clip=SPEC)
    assert rgb.array.shape == (8, 32, 32)  # colour ultrasound is stored grey
    np.testing.assert_allclose(_bar_width(rgb.array), _bar_width(decode(cine_bytes(grey, fps=20), SALT, LIMITS, clip=SPEC).array),
                               atol=0.07)
    mr = decode(cine_bytes(grey, fps=10, modality="MR", extra={"FrameTimeVector": [0] + [50.0] * 11}), SALT, LIMITS, clip=SPEC)
    assert mr.kind == "video" and mr.columns["fps"] == 10.0  # CineRate first


def test_mask_blacks_out_regions_in_every_frame() -> None:
    frames = np.full((10, 40, 40), 200, np.uint8)
    spec = ClipSpec(frames=4, size=20, mask=((0.0, 0.0, 1.0, 0.25), (0.5, 0.5, 1.0, 1.0)))
    for data in (video_bytes(frames), cine_bytes(frames, fps=10)):
        clip = decode(data, SALT, LIMITS, clip=spec).array
        assert (clip[:, :5] == 0).all() and (clip[:, 10:, 10:] == 0).all()
        assert (clip[:, 5:10] > 150).all() and (clip[:, 10:, :10] > 150).all()
    with pytest.raises(ValueError, match="fractions"):
        ClipSpec(frames=4, size=20, mask=((0.5, 0.0, 0.2, 1.0),))


def test_clip_to_an_image_path_is_refused() -> None:
    for data in (video_bytes(sweep_frames(4, 16, 16)), cine_bytes(sweep_frames(4, 16, 16), fps=10)):
        with pytest.raises(NotAClipModel, match="where an image is expected"):
            decode_image(data, LIMITS)


def test_bad_clips_are_refused_with_the_reason(tmp_path: Path) -> None:
    good = faststart_mp4(tmp_path / "fast.mp4", sweep_frames(30, 64, 80))
    bad = {
        "truncated index": (video_bytes(sweep_frames())[:1500], "corrupt or truncated video"),
        "truncated data": (good[: len(good) * 2 // 3], "truncated video: 30 frames declared"),
        "zero frames": (video_bytes(sweep_frames(0), "mjpeg", "avi"), "zero decodable frames"),
        "no stream": (video_bytes(sweep_frames(0), "mpeg4", "mp4"), "lists no streams"),
        "audio only": (audio_only_mp4(), "no video stream in the file (audio streams only)"),
        "burned in": (cine_bytes(sweep_frames(4, 16, 16), fps=10, extra={"BurnedInAnnotation": "YES"}),
                      "BurnedInAnnotation"),
    }
    for what, (data, words) in bad.items():
        with pytest.raises(ImageDecodeError, match=re.escape(words)):
            decode(data, SALT, LIMITS, clip=SPEC)
        assert what


def test_declared_sizes_are_checked_before_decoding() -> None:
    limits = DecodeLimits(max_bytes=2**30, max_side=64, max_frames=100, max_seconds=60.0)
    with pytest.raises(TooLarge, match="64 per side"):
        decode(video_bytes(sweep_frames(4, 64, 80)), SALT, limits, clip=SPEC)
    with pytest.raises(TooLarge, match="frames"):
        decode(video_bytes(sweep_frames(120, 16, 16)), SALT, limits, clip=SPEC)
    with pytest.raises(TooLarge, match="s, over the limit"):
        decode(video_bytes(sweep_frames(90, 16, 16), fps=1), SALT, limits, clip=SPEC)
    # A cine header declaring an absurd size is refused without touching its (short) pixel data.
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(cine_bytes(sweep_frames(4, 16, 16), fps=10)))
    ds.NumberOfFrames, ds.Rows, ds.Columns = 50, 60000, 60000
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(TooLarge, match="60000x60000"):
        decode(buf.getvalue(), SALT, limits, clip=SPEC)


def test_ingest_stores_clips_with_their_columns(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = {"a.mp4": video_bytes(sweep_frames(30, 64, 80)), "b.avi": video_bytes(sweep_frames(20), "mjpeg", "avi"),
             "c.dcm": cine_bytes(sweep_frames(12, 32, 32), fps=20), "d.mp4": audio_only_mp4()}
    for name, data in files.items():
        (src / name).write_bytes(data)
    with open(src / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *[(n, "normal" if n < "c" else "reduced") for n in files]])
    cfg = default_params(ingest={"workers": 1, "video": {"frames": 6, "size": 24, "mask": [[0, 0, 1, 0.2]]}}).ingest
    result = ingest_source(src, tmp_path / "out", cfg, SALT)
    assert [(p["file"], "audio streams only" in p["reason"]) for p in result.problems] == [(file_pseudonym("d.mp4", SALT), True)]
    df = read_manifest(result.manifest)
    assert sorted(df["frames"].tolist()) == [12, 20, 30] and set(df["depth"]) == {6} and set(df["height"]) == {24}
    assert sorted(df["codec"].tolist()) == ["Explicit VR Little Endian", "h264", "mjpeg"]
    assert df["intensity_max"].max() == 255


def test_another_labels_file_in_the_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for k in range(4):
        (src / f"{k}.dcm").write_bytes(cine_bytes(sweep_frames(6 + k, 16, 16), fps=10, patient_id=f"P{k}"))
    rows = {"labels.csv": ["a", "b", "a", "b"], "labels_other.csv": ["x", "x", "y", "y"]}
    for name, labels in rows.items():
        with open(src / name, "w", newline="") as f:
            csv.writer(f).writerows([("path", "label"), *[(f"{k}.dcm", lab) for k, lab in enumerate(labels)]])
    cfg = default_params(ingest={"workers": 1}).ingest
    default = ingest_source(src, tmp_path / "a", cfg, SALT)
    other = ingest_source(src / "labels_other.csv", tmp_path / "b", cfg, SALT)
    assert default.class_names == ("a", "b") and other.class_names == ("x", "y")
    assert other.kind == "dicom" and other.num_images == 4 and other.problems == ()


def test_validate_clip_checks(tmp_path: Path) -> None:
    from components.stages.validate import run_suites

    src = tmp_path / "src"
    src.mkdir()
    clips = {"ok1.mp4": video_bytes(sweep_frames(30, 64, 64)), "ok2.dcm": cine_bytes(sweep_frames(20, 64, 64), fps=25),
             "copy.mp4": video_bytes(sweep_frames(30, 64, 64)), "black.mp4": video_bytes(np.zeros((30, 64, 64), np.uint8)),
             "short.dcm": cine_bytes(sweep_frames(2, 64, 64), fps=25), "tiny.dcm": cine_bytes(sweep_frames(10, 16, 16), fps=25)}
    for name, data in clips.items():
        (src / name).write_bytes(data)
    with open(src / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *[(n, "ab"[k % 2]) for k, n in enumerate(clips)]])
    cfg = default_params(ingest={"workers": 1, "accept_burned_in_risk": ["VIDEO"]}).ingest  # synthetic clips: no text
    result = ingest_source(src, tmp_path / "out", cfg, SALT)
    manifest = read_manifest(result.manifest)
    table = pd.read_csv(tmp_path / "out" / "sources.csv", dtype=str)
    sources = dict(zip(table["image_id"], table["source"], strict=True))
    manifest.loc[manifest["image_id"].map(sources) == file_pseudonym("ok2.dcm", SALT), "frames"] = pd.NA  # as if a still image: mixed kinds
    outcomes = run_suites(manifest, default_params().validate_, sources=sources)
    failed: dict[str, set[str]] = {}
    real = {file_pseudonym(n, SALT): n for n in clips}  # the sources file names each clip by its pseudonym
    for o in outcomes:
        if not o["success"]:
            failed.setdefault(o["check"], set()).update(real.get(f, f) for f in o["offending"])
    assert failed == {"clip_frames": {"short.dcm"}, "clip_duration": {"short.dcm"}, "clip_resolution": {"tiny.dcm"},
                      "black_clips": {"black.mp4"}, "constant_images": {"black.mp4"}, "row_count": set(),
                      "duplicate_images": {"ok1.mp4", "copy.mp4"}, "duplicates_across_splits": {"ok1.mp4", "copy.mp4"},
                      "clip_kind": set()}


def test_quality_report_shows_masked_filmstrips_and_clip_histograms() -> None:
    from components.documents.clips import clip_section

    clip = np.full((8, 16, 16), 200, np.uint8)
    clip[:, :4] = 0  # the masked banner
    manifest = pd.DataFrame({"image_id": ["a", "b", "c"], "label": ["x", "y", "y"], "path": ["p", "p", "p"],
                             "frames": pd.array([30, 40, None], dtype="Int64"), "fps": [25.0, 30.0, None],
                             "duration_s": [1.2, 1.3, None]})
    page = clip_section(manifest, lambda rel: clip, per_class=4)
    assert page.count("data:image/png;base64,") == 2  # one strip per clip; the still image has none
    assert page.count("<svg") == 3 and "duration (s) per class" in page


def test_clip_models_and_the_frame_baseline_ignores_frame_order() -> None:
    import torch

    from components.ml.models import build_model, resolve_family

    shape = (1, 6, 16, 16)
    cfg = default_params().train.model
    assert resolve_family(cfg, shape) == "resnet3d"  # auto: a 3D CNN over (time, H, W)
    clip = torch.rand(2, *shape)
    shuffled = clip[:, :, torch.randperm(6)]
    for family in ("resnet3d", "cnn_rnn", "frame_cnn"):
        torch.manual_seed(0)
        model = build_model(cfg.model_copy(update={"family": family}), shape, 2).eval()
        with torch.no_grad():
            out, out_shuffled = model(clip), model(shuffled)
        assert out.shape == (2, 2)
        assert torch.allclose(out, out_shuffled, atol=1e-5) == (family == "frame_cnn"), family


def test_patient_scores_average_clips_where_the_label_is_the_patients() -> None:
    from components.ml.video import patient_metrics, patient_scores

    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6]])
    labels, patients = np.array([0, 0, 1, 1]), pd.Series(["p", "p", "q", "q"])
    per_label, per_probs = patient_scores(patients, labels, probs)
    assert per_label.tolist() == [0, 1] and np.allclose(per_probs[:, 1], [0.3, 0.7])
    assert patient_metrics(patients, labels, probs, 0.5) == {"patient_auc": 1.0, "patient_accuracy": 1.0, "n_test_patients": 2}
    assert patient_metrics(pd.Series(["p", "p", "p", "q"]), labels, probs, 0.5) == {}  # a clip-level label


def test_prepare_keeps_the_clip_spec_for_serving(tmp_path: Path) -> None:
    from components.ml.transforms import Preprocessing
    from components.stages.prepare import prepare_dataset

    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for k in range(12):
        (src / f"{k}.dcm").write_bytes(cine_bytes(sweep_frames(10 + k, 40, 40), fps=20, patient_id=f"P{k}"))
        rows.append((f"{k}.dcm", "ab"[k % 2]))
    with open(src / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    video = {"frames": 6, "size": 24, "mask": [[0, 0, 1, 0.1]]}
    dataset = ingest_source(src, tmp_path / "ingest", default_params(ingest={"workers": 1, "video": video}).ingest, SALT)
    prepared = prepare_dataset(dataset.manifest, default_params().prepare, tmp_path / "prepare")
    assert prepared.input_shape == (1, 6, 24, 24)
    info = json.loads((tmp_path / "prepare" / "dataset.json").read_text())
    clip = Preprocessing.from_dict(info["preprocessing"]).clip
    assert clip is not None and ClipSpec.from_dict(clip) == ClipSpec(6, 24, ((0.0, 0.0, 1.0, 0.1),))


def test_service_decodes_clips_and_refuses_the_wrong_kind_with_422() -> None:
    from http import HTTPStatus

    from components.ml.transforms import Preprocessing, preprocess
    from services.inference import InputProblem, ModelCard, decode_limits, decode_upload
    from tests.images import dicom_bytes, grey_image, npy_bytes, png_bytes

    clip_spec = {"frames": 8, "size": 32, "mask": []}
    video_model = ModelCard("cine:1", ("normal", "reduced"), Preprocessing((8, 32, 32), 1, 0.0, 255.0, clip_spec), 0.5)
    image_model = ModelCard("ct:1", ("normal", "lesion"), Preprocessing((32, 32), 1, 0.0, 255.0), 0.5)
    for upload in (video_bytes(sweep_frames(30, 64, 80)), video_bytes(sweep_frames(12), "mjpeg", "avi"),
                   cine_bytes(sweep_frames(20, 48, 40), fps=30, syntax="rle"), npy_bytes(np.zeros((8, 32, 32), np.uint8))):
        clip = decode_upload(upload, video_model, decode_limits((1, 8, 32, 32), 32, 2**28, max_seconds=600))
        assert clip.shape == (8, 32, 32) and preprocess(clip, video_model.preprocessing).shape == (1, 8, 32, 32)
    refused = [(png_bytes(grey_image()), video_model, "2D image; this model takes clips"),
               (dicom_bytes(grey_image().astype(np.int16)), video_model, "still image or volume"),
               (video_bytes(sweep_frames(10, 16, 16)), image_model, "is a clip"),
               (cine_bytes(sweep_frames(10, 16, 16), fps=10), image_model, "is a clip")]
    for upload, card, words in refused:
        limits = decode_limits((1, *card.preprocessing.spatial_size), 32, 2**28, max_seconds=600 if card is video_model else 0)
        with pytest.raises(InputProblem, match=re.escape(words)) as caught:
            decode_upload(upload, card, limits)
        assert caught.value.status == HTTPStatus.UNPROCESSABLE_ENTITY


def test_cine_cohort_label_lives_only_in_the_motion(tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from components.demo.cine import generate_cine_cohort

    cfg = default_params(cohort={"cine": {"patients": 24, "clips_per_patient": 1, "frames": 24, "size": 48}}).cohort.cine
    root = generate_cine_cohort(tmp_path / "a", cfg)
    again = generate_cine_cohort(tmp_path / "b", cfg)
    assert (root / "patient-003" / "clip-0.dcm").read_bytes() == (again / "patient-003" / "clip-0.dcm").read_bytes()
    identifiers = json.loads((root / "identifiers.json").read_text())
    result = ingest_source(root, tmp_path / "out", default_params(ingest={"workers": 1}).ingest, SALT)
    manifest = read_manifest(result.manifest)
    assert result.num_images == 24 and result.class_names == ("normal", "reduced") and set(manifest["frames"]) == {24}
    assert not set(identifiers["patient_ids"]) & set(manifest["patient_id"])
    from components.data.shards import ImageStore

    with ImageStore(result.manifest.parent) as store:
        cavity = np.stack([(store.load(p) < 40).mean(axis=(1, 2)) for p in manifest["path"]])  # dark area per frame
    reduced = (manifest["label"] == "reduced").to_numpy()
    assert roc_auc_score(reduced, -cavity.std(axis=1)) > 0.9  # how much the cavity moves: the label
    assert 0.25 < roc_auc_score(reduced, -cavity.mean(axis=1)) < 0.8  # its size in any frame: near chance
