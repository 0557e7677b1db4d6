"""Recordings past ingest: validation and its report, log-mel windows, prepare, augmentation, the audio
networks, per-recording scores, the classical features, the service's decoding and the embedded cohorts."""

from __future__ import annotations

import json
import re
import shutil
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import default_params
from components.data.prepared import load_split, read_dataset_info
from components.demo.dictation import ENGINE, generate_dictation
from components.ml.audio import (
    AudioPreprocessing, SpectrogramAugmentation, log_mel_db, mel_filterbank, mfcc_features, per_recording,
    preprocess_recording, window_spans, windows,
)
from components.ml.models import build_model, resolve_family
from components.privacy.names import file_pseudonym
from components.stages.ingest import ingest_source
from components.stages.prepare import prepare_dataset
from components.stages.validate import validate_manifest
from services.inference import (InputProblem, ModelCard, decode_recording, per_upload, prepare_recordings, recording_spans,
                                window_scores)
from tests.images import audio_bytes, png_bytes, grey_image, tone

SALT = "unit-test-salt"
PARAMS = default_params(ingest={"workers": 1, "audio": {"sample_rate": 4000}},
                        cohort={"audio": {"speakers": 12, "phrases_per_speaker": 4}},
                        validate={"thumbnails_per_class": 2})
SPEC = AudioPreprocessing.from_config(PARAMS.prepare.audio, 4000, -100.0, 20.0)


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tones cohort (no engine needed), ingested."""
    src, out = tmp_path_factory.mktemp("tones-src"), tmp_path_factory.mktemp("tones-ingest")
    generate_dictation(src, PARAMS.cohort.audio, speech=False)
    # one clipped recording with a DC offset, for the warning checks
    loud = np.clip(3 * tone(1.0, 8000) + 0.3, -1, 1)
    (src / "speaker-000" / "loud.wav").write_bytes(audio_bytes(loud, 8000))
    with open(src / "labels.csv", "a") as f:
        f.write("speaker-000/loud.wav,normal,speaker-000\n")
    return src, ingest_source(src, out, PARAMS.ingest, SALT).manifest


def test_tones_cohort_is_deterministic_with_speakers_as_patients(tmp_path: Path, tones) -> None:
    src, _ = tones
    labels = pd.read_csv(src / "labels.csv")
    assert len(labels) == 12 * 4 + 1 and labels["patient_id"].nunique() == 12
    assert set(labels["label"]) == {"finding", "normal"}
    again = generate_dictation(tmp_path, PARAMS.cohort.audio, speech=False)
    assert (again / "speaker-003" / "01.wav").read_bytes() == (src / "speaker-003" / "01.wav").read_bytes()


@pytest.mark.skipif(shutil.which(ENGINE) is None, reason=f"{ENGINE} (Debian package espeak-ng) is not installed")
def test_dictation_speaks_phrases_with_distinct_voices(tmp_path: Path) -> None:
    cfg = default_params(cohort={"audio": {"speakers": 3, "phrases_per_speaker": 2}}).cohort.audio
    generate_dictation(tmp_path, cfg)
    rows = pd.read_csv(tmp_path / "labels.csv")
    assert len(rows) == 6 and rows["patient_id"].nunique() == 3
    import soundfile

    durations = [soundfile.info(tmp_path / p).duration for p in rows["path"]]
    assert all(0.5 < d < 6 for d in durations)


def test_validation_checks_recordings_and_the_report_shows_only_images(tones, tmp_path: Path) -> None:
    _, manifest = tones
    result = validate_manifest(manifest, PARAMS.validate_, tmp_path, [])
    assert result.success, result.failed_expectations
    warned = {w.split(":")[0] for w in result.warnings}
    assert {"clipping", "dc_offset"} <= warned
    report = json.loads((tmp_path / "report.json").read_text())
    checks = {o["check"] for o in report["expectations"]}
    assert {"sample_rate", "duration", "level", "silence", "patient_leakage", "duplicate_images"} <= checks
    clipping = next(o for o in report["expectations"] if o["check"] == "clipping")
    assert clipping["offending"] == [file_pseudonym("speaker-000/loud.wav", SALT)]  # sources.csv names files by pseudonym
    html = (tmp_path / "report.html").read_text()
    assert "Spectrograms and waveforms per class" in html and "data:image/png;base64," in html
    assert not re.search(r"<audio|<video|data:audio|\.wav\"", html)  # never playable audio


def test_prepare_makes_windows_scored_per_recording(tones, tmp_path: Path) -> None:
    _, manifest = tones
    result = prepare_dataset(manifest, PARAMS.prepare, tmp_path)
    info = read_dataset_info(tmp_path)
    assert info["preprocessing"]["kind"] == "audio" and tuple(info["input_shape"]) == SPEC.input_shape
    images, labels, rows = load_split(tmp_path, "train")
    assert images.shape[1:] == SPEC.input_shape and 0 <= images.min() and images.max() <= 1
    assert len(rows) == len(images) == len(labels) and "window" in rows
    assert rows["image_id"].nunique() == result.counts["train"]
    probs = np.random.default_rng(0).random((len(rows), 2))
    first, mean, per_label = per_recording(rows, probs, labels)
    assert len(first) == len(mean) == len(per_label) == result.counts["train"]
    k = rows["image_id"] == first["image_id"][0]
    np.testing.assert_allclose(mean[0], probs[k.to_numpy()].mean(axis=0))


def test_windows_cover_long_recordings_and_pad_short_ones() -> None:
    size = SPEC.window_samples
    assert windows(np.ones(size // 3, np.float32), SPEC).shape == (1, size)
    long = np.arange(int(size * 2.3), dtype=np.float32)
    w = windows(long, SPEC)
    assert w[0, 0] == 0 and w[-1, -1] == long[-1] and len(w) == 4  # hops of half a window, the last at the end
    spans = window_spans(len(long), SPEC)
    assert len(spans) == len(w) and spans[0][0] == 0.0 and spans[-1][1] == len(long) / SPEC.sample_rate
    assert [round(b - a, 6) for a, b in spans] == [SPEC.window_s] * len(w)
    assert window_spans(size // 3, SPEC) == [(0.0, size // 3 / SPEC.sample_rate)]  # padding is not audio


def test_log_mel_puts_a_tone_in_its_mel_band() -> None:
    filters = mel_filterbank(4000, 256, 32)
    assert filters.shape == (32, 129) and (filters.max(axis=1) > 0.7).all()
    for hz in (200.0, 1200.0):
        db = log_mel_db(windows(tone(SPEC.window_s, 4000, hz=hz), SPEC), SPEC)[0]
        band = int(db.mean(axis=1).argmax())
        centre = np.argmax(filters[band]) * 4000 / 256
        assert abs(centre - hz) < 0.15 * hz + 40
    spectrogram = preprocess_recording(tone(9.0, 4000), SPEC)
    assert spectrogram.shape == (4, *SPEC.input_shape)  # starts at 0, 2 and 4 s, and the last at 5 s
    with pytest.raises(ValueError, match="expected a recording"):
        preprocess_recording(np.zeros((8, 8), np.float32), SPEC)


def test_mel_filters_span_the_band_kept() -> None:
    heart = PARAMS.prepare.audio.model_copy(update={"band_low_hz": 25.0, "band_high_hz": 400.0})
    spec = AudioPreprocessing.from_config(heart.model_copy(update={"n_fft": 512}), 4000)
    assert spec.mel_range == (25.0, 400.0)
    freqs = np.linspace(0, 2000, 257)
    used = freqs[mel_filterbank(4000, 512, 32, *spec.mel_range).sum(axis=0) > 0]
    assert used.min() >= 25.0 and used.max() <= 400.0  # every band inside 25-400 Hz, none wasted above it
    old = AudioPreprocessing.from_dict({k: v for k, v in spec.to_dict().items() if k != "mel_in_band"})
    assert old.mel_range == (0.0, 2000.0)  # a model stored before the field keeps its own preprocessing
    with pytest.raises(ValueError, match="narrower than the FFT's bins"):
        AudioPreprocessing.from_config(heart.model_copy(update={"n_fft": 64}), 4000)


def test_band_pass_removes_what_lies_outside_the_band() -> None:
    heart = AudioPreprocessing(**{**SPEC.to_dict(), "band_low_hz": 25.0, "band_high_hz": 400.0})
    low, high = (preprocess_recording(tone(4.0, 4000, hz=hz), heart).mean() for hz in (100.0, 1500.0))
    assert low > high + 0.1


def test_spectrogram_augmentation_is_seeded_and_masks() -> None:
    batch = torch.rand(8, *SPEC.input_shape)
    cfg = PARAMS.train.audio_augment
    a = SpectrogramAugmentation(cfg, 120.0, torch.Generator().manual_seed(1))(batch)
    b = SpectrogramAugmentation(cfg, 120.0, torch.Generator().manual_seed(1))(batch)
    assert torch.equal(a, b) and a.shape == batch.shape and not torch.equal(a, batch)
    assert 0 <= a.min() and a.max() <= 1
    masks_only = cfg.model_copy(update={"time_shift": 0.0, "gain_db": 0.0, "noise_probability": 0.0})
    m = SpectrogramAugmentation(masks_only, 120.0, torch.Generator().manual_seed(2))(batch)
    changed = m != batch
    assert 0 < changed.float().mean() < 0.6
    assert torch.allclose(m[changed], batch.mean(dim=(2, 3), keepdim=True).expand_as(batch)[changed])
    off = SpectrogramAugmentation(cfg.model_copy(update={"enabled": False}), 120.0, torch.Generator())(batch)
    assert torch.equal(off, batch)


@pytest.mark.parametrize("family", ["auto", "crnn"])
def test_audio_networks(family: str) -> None:
    cfg = PARAMS.train.model.model_copy(update={"family": family, "width": 4, "rnn_hidden": 8})
    assert resolve_family(cfg, SPEC.input_shape, audio=True) == ("audio_cnn" if family == "auto" else "crnn")
    net = build_model(cfg, SPEC.input_shape, 3, audio=True)
    assert net(torch.rand(2, *SPEC.input_shape)).shape == (2, 3)
    with pytest.raises(ValueError, match="not for recordings"):
        resolve_family(cfg.model_copy(update={"family": "resnet"}), SPEC.input_shape, audio=True)


def test_mfcc_features_separate_tones() -> None:
    low = preprocess_recording(tone(4.0, 4000, hz=150), SPEC)
    high = preprocess_recording(tone(4.0, 4000, hz=900), SPEC)
    f = mfcc_features(np.concatenate([low, high]))
    assert f.shape[0] == 2 and np.isfinite(f).all() and not np.allclose(f[0], f[1])


def test_service_decodes_recordings_and_refuses_images() -> None:
    card = ModelCard("m:1", ("normal", "finding"), SPEC, 0.5)
    assert card.audio and card.spatial_dims == 0
    samples = decode_recording(audio_bytes(tone(2.0, 22050), 22050), card, 60)
    assert len(samples) == 8000
    batch, counts = prepare_recordings([samples, np.zeros(4000 * 9, np.float32)], card)
    assert counts == [1, 4] and batch.shape == (5, *SPEC.input_shape)
    probs = np.array([[0.2, 0.8], [0, 1], [1, 0], [0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(per_upload(probs, counts), [[0.2, 0.8], [0.5, 0.5]])
    spans = recording_spans([samples, np.zeros(4000 * 9, np.float32)], card)
    assert [len(s) for s in spans] == counts and spans[1][-1] == (5.0, 9.0)
    scores = window_scores(probs[1:], spans[1], card)
    assert scores[0] == {"start_s": 0.0, "end_s": 4.0, "probabilities": {"normal": 0.0, "finding": 1.0}}
    assert [s["probabilities"]["normal"] for s in scores] == [0.0, 1.0, 0.5, 0.5]
    with pytest.raises(InputProblem, match="takes recordings") as image:
        decode_recording(png_bytes(grey_image()), card, 60)
    assert image.value.status == HTTPStatus.UNPROCESSABLE_ENTITY
    with pytest.raises(InputProblem, match="over the limit of 1 s") as long:
        decode_recording(audio_bytes(tone(2.0, 8000), 8000), card, 1)
    assert long.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def test_cli_names_the_embedded_cohorts_and_what_is_missing(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import typer

    from cli.retrain import resolve_source

    assert resolve_source("cohort:tones") == "cohort:tones"
    with pytest.raises(typer.Exit):
        resolve_source("cohort:nothing")
    monkeypatch.setenv("PATH", "/nonexistent")  # no espeak-ng on the PATH
    with pytest.raises(typer.Exit):
        resolve_source("cohort:dictation")
    assert "apt-get install -y espeak-ng" in capsys.readouterr().out.replace("\n", "")
