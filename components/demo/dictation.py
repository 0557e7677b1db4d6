"""Embedded audio cohorts: spoken report phrases by a real speech engine, or tones where it is absent.

``cohort:dictation`` speaks short radiology report phrases with espeak-ng (Debian's ``espeak-ng``
package; `make setup` installs it): `FINDINGS` (label ``finding``) and their negations and normal
statements `NORMAL` (label ``normal``). Every speaker is a distinct voice: an English accent
(`ACCENTS`), a voice variant (`VARIANTS`), a speaking rate and a pitch, drawn per speaker; every
recording gets background noise (white and low-frequency hum) at a random signal-to-noise ratio and
a random gain. The speaker is the ``patient_id``, so prepare's patient-level split tests voices the
model never heard.

``cohort:tones`` needs no engine: each "speaker" hums two-tone sequences at its own base pitch;
``finding`` recordings carry a short rising chirp among the tones, ``normal`` ones do not.

Layout of `out_dir`: ``<speaker>/<n>.wav`` (16-bit PCM at the engine's rate) and ``labels.csv``
(path, label, patient_id). Same config, same recordings: every draw comes from
``numpy.random.default_rng(cfg.seed)`` and espeak-ng is deterministic for the same arguments.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from components.config import AudioCohortConfig

FINDINGS = (
    "small left pleural effusion", "consolidation in the right lower lobe", "enlarged cardiac silhouette",
    "there is a pneumothorax on the right", "suspicious nodule in the left upper lobe",
    "fracture of the seventh rib", "free air under the diaphragm", "mild pulmonary edema",
)
NORMAL = (
    "no acute findings", "the lungs are clear", "heart size is normal", "no pleural effusion",
    "no pneumothorax", "no focal consolidation", "the bones are intact", "unremarkable study",
)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "croak", "Andy", "Annie", "Gene", "Lee", "Mike", "aunty", "boris", "david", "edward",
            "grandma", "john", "linda", "max", "paul", "robert", "steph")
ENGINE = "espeak-ng"
TONE_RATE = 8000


class EngineMissing(RuntimeError):
    """The speech engine is not installed; the message says how to install it."""


def require_engine() -> None:
    """Raises EngineMissing, saying how to install it, when espeak-ng is not on the PATH."""
    if shutil.which(ENGINE) is None:
        raise EngineMissing(f"cohort:dictation needs the {ENGINE} speech engine, which is not installed: run "
                            f"`apt-get install -y {ENGINE}` (make setup does), or use --dataset cohort:tones")


def _speak(text: str, accent: str, variant: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
    import soundfile

    wav = subprocess.run([ENGINE, "-v", f"{accent}+{variant}", "-s", str(rate), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True, timeout=60).stdout
    samples, sr = soundfile.read(io.BytesIO(wav), dtype="float32")
    return samples, sr


def _noisy(samples: np.ndarray, rate: int, rng: np.random.Generator, cfg: AudioCohortConfig) -> np.ndarray:
    """`samples` with white noise and mains-like hum at a random SNR, a random gain and lead-in/out silence."""
    pad = np.zeros(int(rng.uniform(0.05, 0.4) * rate), np.float32)
    x = np.concatenate([pad, samples, pad[: len(pad) // 2]])
    power = float(np.mean(samples ** 2)) or 1e-6
    snr = rng.uniform(cfg.snr_db_low, cfg.snr_db_high)
    t = np.arange(len(x)) / rate
    hum = np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t) * rng.uniform(0.2, 1.0)
    noise = rng.standard_normal(len(x)) + hum
    noise *= np.sqrt(power / 10 ** (snr / 10) / np.mean(noise ** 2))
    y = (x + noise) * rng.uniform(0.3, 1.0)
    return (y / max(1.0, float(np.abs(y).max()) / 0.95)).astype(np.float32)


def _tone_sequence(finding: bool, base_hz: float, rng: np.random.Generator) -> np.ndarray:
    """A tones recording: 3-6 notes around `base_hz`; a finding has a rising chirp among them."""
    notes = []
    for k in range(int(rng.integers(3, 7))):
        n = int(rng.uniform(0.15, 0.35) * TONE_RATE)
        t = np.arange(n) / TONE_RATE
        hz = base_hz * rng.choice([1.0, 1.25, 1.5])
        if finding and k == 1:
            notes.append(0.6 * np.sin(2 * np.pi * (hz * t + 3 * hz * t ** 2)) * np.hanning(n))
        else:
            notes.append(0.6 * np.sin(2 * np.pi * hz * t) * np.hanning(n))
        notes.append(np.zeros(int(0.05 * TONE_RATE)))
    return np.concatenate(notes).astype(np.float32)


def generate_dictation(out_dir: Path, cfg: AudioCohortConfig, speech: bool = True) -> Path:
    """Write the spoken (or, with `speech` False, the tones) cohort described in the module docstring.

    Args:
        out_dir: created; its speaker folders and labels.csv are replaced.
        cfg: speakers, phrases per speaker, noise range, seed.

    Raises:
        EngineMissing: `speech` and espeak-ng is not installed.
    """
    import soundfile

    if speech:
        require_engine()
    out_dir = Path(out_dir)
    for old in out_dir.glob("speaker-*"):
        shutil.rmtree(old)
    rng = np.random.default_rng(cfg.seed)
    phrases = [(p, "finding") for p in FINDINGS] + [(p, "normal") for p in NORMAL]
    jobs = []
    for s in range(cfg.speakers):
        voice = (ACCENTS[s % len(ACCENTS)], VARIANTS[(s * 7) % len(VARIANTS)], int(rng.integers(120, 200)),
                 int(rng.integers(15, 85)))
        chosen = rng.choice(len(phrases), size=min(cfg.phrases_per_speaker, len(phrases)), replace=False)
        for n, k in enumerate(sorted(chosen)):
            jobs.append((f"speaker-{s:03d}", f"speaker-{s:03d}/{n:02d}.wav", phrases[k], voice,
                         np.random.default_rng([cfg.seed, s, n])))
    with ThreadPoolExecutor(4) as pool:  # the engine runs as a subprocess per phrase: 0.1 s each
        spoken = list(pool.map(lambda j: _speak(j[2][0], *j[3]) if speech else
                               (_tone_sequence(j[2][1] == "finding", 180.0 + 2.5 * int(j[0][-3:]), j[4]), TONE_RATE),
                               jobs))
    rows = []
    for (speaker, rel, (_, label), _, draw), (samples, rate) in zip(jobs, spoken, strict=True):
        (out_dir / speaker).mkdir(parents=True, exist_ok=True)
        soundfile.write(out_dir / rel, _noisy(samples, rate, draw, cfg), rate, subtype="PCM_16")
        rows.append({"path": rel, "label": label, "patient_id": speaker})
    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return out_dir
