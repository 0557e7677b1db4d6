"""Recordings: real decoding of WAV (PCM 8-32 bit, float), FLAC and OGG written by soundfile; level
columns; resampling; the declared-size limits; each bad file refused with its reason; ingest."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

from components.config import default_params
from components.data.manifest import read_manifest
from components.data.shards import ImageStore
from components.readers import ImageDecodeError, TooLarge, decode, reader_for_name
from components.readers.audio import AudioReader, resample
from components.readers.base import DecodeLimits
from components.stages.ingest import ingest_source
from tests.conftest import problems_by_file
from tests.images import audio_bytes, tone, waveform_dicom_bytes

SALT = "unit-test-salt"
LIMITS = DecodeLimits(**default_params().ingest.limits.model_dump())  # what ingest reads with
READER = AudioReader()


@pytest.mark.parametrize("subtype, tolerance", [
    ("PCM_U8", 1 / 64), ("PCM_16", 1e-4), ("PCM_24", 1e-6), ("PCM_32", 1e-6), ("FLOAT", 0), ("DOUBLE", 0),
])
def test_wav_bit_depths_decode_to_the_same_float_samples(subtype: str, tolerance: float) -> None:
    samples = tone(0.25, rate=8000)
    decoded = decode(audio_bytes(samples, 8000, subtype), SALT, LIMITS)
    assert decoded.kind == "audio" and decoded.array.dtype == np.float32 and decoded.array.shape == samples.shape
    np.testing.assert_allclose(decoded.array, samples, atol=tolerance)
    cols = decoded.columns
    assert cols["sample_rate"] == 8000 and cols["source_channels"] == 1 and cols["duration_s"] == 0.25
    assert cols["peak_dbfs"] == pytest.approx(20 * np.log10(0.5), abs=0.1)
    assert cols["clipped_fraction"] == 0 and cols["silent_fraction"] == 0


@pytest.mark.parametrize("fmt, subtype, tolerance", [("FLAC", "PCM_16", 1e-4), ("FLAC", "PCM_24", 1e-6),
                                                      ("OGG", "", 0.05)])
def test_flac_and_ogg(fmt: str, subtype: str, tolerance: float) -> None:
    samples = tone(0.5, rate=22050)
    data = audio_bytes(samples, 22050, subtype, fmt)
    decoded = decode(data, SALT, LIMITS)
    assert decoded.columns["sample_rate"] == 22050
    n = min(len(samples), len(decoded.array))
    assert abs(len(decoded.array) - len(samples)) < 64
    np.testing.assert_allclose(decoded.array[:n], samples[:n], atol=tolerance)


def test_stereo_is_downmixed_and_odd_rates_resample() -> None:
    stereo = tone(1.0, rate=4000, hz=50, channels=2)
    decoded = decode(audio_bytes(stereo, 4000, "PCM_24"), SALT, LIMITS)
    assert decoded.columns["source_channels"] == 2
    np.testing.assert_allclose(decoded.array, stereo.mean(axis=1), atol=1e-5)
    at_22050 = tone(1.0, rate=22050, hz=100)
    down = resample(decode(audio_bytes(at_22050, 22050), SALT, LIMITS).array, 22050, 4000)
    assert len(down) == 4000
    np.testing.assert_allclose(down[200:-200], tone(1.0, rate=4000, hz=100)[200:-200], atol=0.01)
    np.testing.assert_array_equal(resample(down, 4000, 4000), down)


def test_level_columns_measure_clipping_silence_and_offset() -> None:
    rate = 8000
    samples = np.concatenate([np.zeros(rate // 2), np.clip(4 * tone(0.5, rate), -1, 1)]).astype(np.float32)
    cols = decode(audio_bytes(samples, rate, "FLOAT"), SALT, LIMITS).columns
    assert cols["silent_fraction"] == pytest.approx(0.5, abs=0.03)
    assert 0.2 < cols["clipped_fraction"] < 0.5 and cols["peak_dbfs"] == pytest.approx(0, abs=0.01)
    offset = decode(audio_bytes(tone(0.5, rate, level=0.1) + 0.3, rate, "PCM_16"), SALT, LIMITS).columns
    assert offset["dc_offset"] == pytest.approx(0.3, abs=1e-3) and offset["clipped_fraction"] == 0


def test_limits_are_checked_from_the_header_before_decoding() -> None:
    data = audio_bytes(tone(3.0, 8000), 8000)
    with pytest.raises(TooLarge, match=r"declares 3\.0 s, over the limit of 2 s"):
        READER.read(data, SALT, DecodeLimits(max_bytes=10**9, max_side=10**9, max_frames=10, max_seconds=2))
    with pytest.raises(TooLarge, match="MiB"):
        READER.read(data, SALT, DecodeLimits(max_bytes=1000, max_side=10**9, max_frames=10, max_seconds=60))
    assert READER.read(data, SALT, DecodeLimits(10**9, 10**9, 10, 60.0)).columns["duration_s"] == 3.0


def _truncated_wav() -> bytes:
    data = audio_bytes(tone(0.5, 8000), 8000)
    return data[: len(data) // 2]


def _wrong_header() -> bytes:
    data = bytearray(audio_bytes(tone(0.5, 8000), 8000))
    data[20:22] = struct.pack("<H", 0x7777)  # an unknown WAVE format tag
    return bytes(data)


@pytest.mark.parametrize("make, reason", [
    (_truncated_wav, "truncated WAV: data chunk declares 8000 bytes, the file holds 3978"),
    (_wrong_header, "unreadable WAV header"),
    (lambda: audio_bytes(np.zeros(0, np.float32), 8000), "WAV holds zero samples"),
    (lambda: audio_bytes(np.array([0.1, np.nan] * 100, np.float32), 8000, "FLOAT"), "NaN"),
    (lambda: b"RIFF\x00\x00\x00\x00WAVEfmt ", "unreadable WAV header"),
])
def test_bad_recordings_are_refused_with_the_reason(make, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=re.escape(reason)):
        decode(make(), SALT, LIMITS)


def test_ingest_reports_each_bad_recording_by_name(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "rec").mkdir(parents=True)
    rows = ["path,label,patient_id,site"]
    for i in range(6):
        label = ("normal", "murmur")[i % 2]
        (src / "rec" / f"r{i}.wav").write_bytes(audio_bytes(tone(0.5, 8000 if i % 3 else 22050, hz=100 + 50 * (i % 2)),
                                                            8000 if i % 3 else 22050))
        rows.append(f"rec/r{i}.wav,{label},p{i},site{i % 2}")
    (src / "rec" / "r6.flac").write_bytes(audio_bytes(tone(1.0, 4000), 4000, "PCM_16", "FLAC"))
    rows.append("rec/r6.flac,normal,p6,site0")
    bad = {"rec/cut.wav": _truncated_wav(), "rec/head.wav": _wrong_header(),
           "rec/empty.wav": audio_bytes(np.zeros(0, np.float32), 8000)}
    for name, data in bad.items():
        (src / name).write_bytes(data)
        rows.append(f"{name},normal,px,site0")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = default_params(ingest={"workers": 1, "audio": {"sample_rate": 2000}}).ingest
    result = ingest_source(src, tmp_path / "out", cfg, SALT)
    assert result.kind == "audio" and result.num_images == 7
    problems = problems_by_file(json.loads((tmp_path / "out" / "problems.json").read_text()), bad, SALT)
    assert set(problems) == set(bad)
    assert "truncated" in problems["rec/cut.wav"] and "zero samples" in problems["rec/empty.wav"]
    manifest = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert set(manifest["sample_rate"]) == {8000, 22050, 4000} and set(manifest["site"]) == {"site0", "site1"}
    assert (manifest["ndim"] == 1).all() and (manifest["height"] == 1).all()
    with ImageStore(tmp_path / "out") as store:
        lengths = {int(d): store.load(p).shape[0] for p, d in zip(manifest["path"], manifest["duration_s"] * 10)}
    assert lengths == {5: 1000, 10: 2000}  # 0.5 s and 1 s at 2000 Hz, whatever the source rate


def test_class_folders_of_recordings(tmp_path) -> None:
    for label, hz in (("normal", 100), ("murmur", 300)):
        (tmp_path / "src" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "src" / label / f"{i}.wav").write_bytes(audio_bytes(tone(0.2, 8000, hz=hz + i), 8000))
    assert reader_for_name("x.OGG").name == "audio"
    cfg = default_params(ingest={"workers": 1, "audio": {"sample_rate": 4000}}).ingest
    result = ingest_source(tmp_path / "src", tmp_path / "out", cfg, SALT)
    assert result.kind == "audio-folders" and result.num_images == 6 and result.class_names == ("normal", "murmur")


def test_dicom_waveforms_are_recordings_with_a_de_identified_header() -> None:
    from components.privacy.deid import pseudonym

    codes = (tone(1.0, 8000, channels=2) * 32768).astype("<i2")
    decoded = decode(waveform_dicom_bytes(codes, 8000), SALT, LIMITS)
    assert decoded.kind == "audio" and decoded.array.dtype == np.float32
    np.testing.assert_allclose(decoded.array, codes.mean(axis=1) / 32768, atol=1e-6)  # the channels downmixed
    cols = decoded.columns
    assert cols["sample_rate"] == 8000 and cols["source_channels"] == 2 and cols["duration_s"] == 1.0
    assert cols["patient_id"] == pseudonym("MRN-55502", SALT) and cols["age_band"] == "40-49" and cols["sex"] == "F"
    assert not re.search(r"Doe|Jane|MRN-55502|Example", " ".join(map(str, cols.values())))


def test_dicom_waveform_sample_codes_and_bad_waveforms() -> None:
    mu = decode(waveform_dicom_bytes(np.array([0xFF, 0x00, 0x80], np.uint8), 8000, "MB"), SALT, LIMITS).array
    a = decode(waveform_dicom_bytes(np.array([0xD5, 0x55, 0xAA], np.uint8), 8000, "AB"), SALT, LIMITS).array
    np.testing.assert_allclose(mu * 32768, [0, -32124, 32124])  # G.711: silence and both extremes
    np.testing.assert_allclose(a * 32768, [8, -8, 32256])
    short = waveform_dicom_bytes(np.zeros(100, "<i2"), 8000, declared_samples=8000)
    with pytest.raises(ImageDecodeError, match="truncated DICOM waveform: 8000 samples declared"):
        decode(short, SALT, LIMITS)
    with pytest.raises(TooLarge):
        decode(waveform_dicom_bytes(np.zeros(100, "<i2"), 8000, declared_samples=10**9), SALT, LIMITS)
    with pytest.raises(ImageDecodeError, match="interpretation 'XX' is not supported"):
        decode(waveform_dicom_bytes(np.zeros(100, "<i2"), 8000, "XX"), SALT, LIMITS)


def test_a_folder_of_dicom_waveforms_ingests_as_recordings(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "voice").mkdir(parents=True)
    rows = ["path,label"]
    for i in range(4):
        samples = (tone(0.5, 8000, hz=(150, 600)[i % 2]) * 32768).astype("<i2")
        (src / "voice" / f"v{i}.dcm").write_bytes(waveform_dicom_bytes(samples, 8000, patient_name=f"Doe^Pat{i}"))
        rows.append(f"voice/v{i}.dcm,{('low', 'high')[i % 2]}")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = default_params(ingest={"workers": 1, "audio": {"sample_rate": 4000}}).ingest
    result = ingest_source(src, tmp_path / "out", cfg, SALT)
    manifest = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert result.num_images == 4 and set(manifest["sample_rate"]) == {8000} and (manifest["ndim"] == 1).all()
    assert set(manifest["modality"]) == {"AU"} and manifest["patient_id"].nunique() == 1  # the same pseudonymous MRN
    stored = " ".join(p.read_text(errors="ignore") for p in (tmp_path / "out").rglob("*") if p.suffix in (".csv", ".json"))
    assert "Doe" not in stored and "MRN-55502" not in stored
    with ImageStore(tmp_path / "out") as store:
        assert store.load(manifest["path"].iloc[0]).shape == (2000,)  # 0.5 s at the 4 kHz the dataset asks
