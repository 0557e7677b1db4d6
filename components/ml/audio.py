"""The one preprocessing path of recordings, shared by prepare, train, evaluate, baseline and the service.

A stored recording (float32 mono samples at ``ingest.audio.sample_rate``, docs/manifest.md) becomes
fixed-length windows (``prepare.audio.window_s`` long, every ``hop_s``; a shorter recording is one
window, zero-padded), optionally band-passed first, each window a log-mel spectrogram (1, n_mels,
frames) mapped to [0, 1] through the dB range of the training split. A recording's score is the mean
of its windows' class probabilities (`per_recording`). `AudioPreprocessing` is stored with the model
(``kind: audio``), so the service repeats it exactly. The mel filterbank is computed here (HTK mel
scale, triangular filters) in numpy: torchaudio is not among the project's packages.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from components.config import AudioAugmentConfig, AudioPrepareConfig

if TYPE_CHECKING:
    import pandas as pd  # the service imports this module without pandas

_EPS = 1e-10


class AudioShapeError(ValueError):
    """An input that is not a recording (an image sent to an audio model, say)."""


@dataclass(frozen=True)
class AudioPreprocessing:
    """Parameters of `preprocess_recording`; `lower_db`/`upper_db` come from the training split."""

    sample_rate: int
    window_s: float
    hop_s: float
    n_fft: int
    hop_length: int
    n_mels: int
    band_low_hz: float  # 0: no high-pass
    band_high_hz: float  # 0: no low-pass
    lower_db: float
    upper_db: float
    kind: str = "audio"
    # The mel filters span the band kept (a model stored before this field: 0 Hz to Nyquist, whatever its band).
    mel_in_band: bool = False

    @classmethod
    def from_config(cls, cfg: AudioPrepareConfig, sample_rate: int, lower_db: float = 0.0,
                    upper_db: float = 1.0) -> AudioPreprocessing:
        spec = cls(sample_rate, cfg.window_s, cfg.hop_s, cfg.n_fft, cfg.hop_length, cfg.n_mels,
                   cfg.band_low_hz, cfg.band_high_hz, lower_db, upper_db, mel_in_band=True)
        mel_filterbank(sample_rate, spec.n_fft, spec.n_mels, *spec.mel_range)  # refuses filters between FFT bins
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AudioPreprocessing:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})

    @property
    def mel_range(self) -> tuple[float, float]:
        """Lowest and highest frequency (Hz) the mel filters span: the band when one is set, else 0 to Nyquist."""
        nyquist = self.sample_rate / 2
        if not self.mel_in_band:
            return 0.0, nyquist
        return max(0.0, self.band_low_hz), self.band_high_hz if 0 < self.band_high_hz < nyquist else nyquist

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.n_mels, 1 + self.window_samples // self.hop_length)


def band_pass(samples: np.ndarray, spec: AudioPreprocessing) -> np.ndarray:
    """Zero-phase 4th-order Butterworth band-, high- or low-pass as `spec` asks; unchanged when it asks none."""
    nyquist = spec.sample_rate / 2
    low, high = spec.band_low_hz, spec.band_high_hz if 0 < spec.band_high_hz < nyquist else 0.0
    if low <= 0 and high <= 0:
        return samples
    from scipy.signal import butter, sosfiltfilt

    if low > 0 and high > 0:
        sos = butter(4, [low, high], btype="bandpass", fs=spec.sample_rate, output="sos")
    else:
        sos = butter(4, low or high, btype="highpass" if low > 0 else "lowpass", fs=spec.sample_rate, output="sos")
    if len(samples) <= 27:  # sosfiltfilt's padding needs a few times the filter's order
        return samples
    return sosfiltfilt(sos, samples).astype(np.float32)


def window_starts(n_samples: int, spec: AudioPreprocessing) -> list[int]:
    """First sample of each window of a recording of `n_samples`: every `hop_s`, the last one ending at
    the recording's end; a recording no longer than one window is one window (zero-padded)."""
    size, hop = spec.window_samples, max(1, round(spec.hop_s * spec.sample_rate))
    if n_samples <= size:
        return [0]
    starts = list(range(0, n_samples - size + 1, hop))
    if starts[-1] + size < n_samples:
        starts.append(n_samples - size)
    return starts


def window_spans(n_samples: int, spec: AudioPreprocessing) -> list[tuple[float, float]]:
    """(start, end) in seconds of each window `windows` cuts from a recording of `n_samples`."""
    rate, size = spec.sample_rate, spec.window_samples
    return [(s / rate, min(s + size, n_samples) / rate) for s in window_starts(n_samples, spec)]


def windows(samples: np.ndarray, spec: AudioPreprocessing) -> np.ndarray:
    """(K, window_samples): the windows of `window_starts`."""
    size = spec.window_samples
    if len(samples) <= size:
        return np.pad(samples, (0, size - len(samples)))[None, :]
    return np.stack([samples[s:s + size] for s in window_starts(len(samples), spec)])


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, low_hz: float = 0.0, high_hz: float = 0.0) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the HTK mel scale from `low_hz` to
    `high_hz` (0: Nyquist).

    Raises:
        ValueError: a filter holds no FFT bin (too many mels for `n_fft` over the range): its band would
            be a constant, silent row.
    """
    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    high_hz = high_hz or sample_rate / 2
    edges_mel = np.linspace(mel(np.array(low_hz)), mel(np.array(high_hz)), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / np.maximum(centre - lower, _EPS)
    falling = (upper - freqs) / np.maximum(upper - centre, _EPS)
    bank = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    if (empty := np.flatnonzero(bank.sum(axis=1) == 0)).size:
        raise ValueError(f"{n_mels} mel bands over {low_hz:g}-{high_hz:g} Hz are narrower than the FFT's bins "
                         f"({sample_rate / n_fft:.1f} Hz at n_fft {n_fft}, {sample_rate} Hz): band {empty[0]} holds "
                         "none; raise prepare.audio.n_fft or lower n_mels")
    return bank


def log_mel_db(frames: np.ndarray, spec: AudioPreprocessing) -> np.ndarray:
    """(K, n_mels, T) mel power in dB of windows (K, window_samples): centred periodic-Hann STFT with
    reflect padding (numpy: on a shared CPU, torch.stft's threads cost ten times more than the FFT)."""
    half = spec.n_fft // 2
    padded = np.pad(frames, ((0, 0), (half, half)), mode="reflect" if frames.shape[1] > half else "constant")
    steps = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft, axis=1)[:, :: spec.hop_length]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(spec.n_fft) / spec.n_fft)).astype(np.float32)
    power = np.abs(np.fft.rfft(steps * window, axis=-1)) ** 2  # (K, T, F)
    mel = np.einsum("mf,ktf->kmt", mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, *spec.mel_range), power)
    return 10.0 * np.log10(mel + _EPS)


def preprocess_recording(samples: np.ndarray, spec: AudioPreprocessing) -> np.ndarray:
    """One stored or uploaded recording (float32 mono at `spec.sample_rate`) → (K, 1, n_mels, T) in [0, 1].

    Raises:
        AudioShapeError: not a 1-D recording, or non-finite samples.
    """
    arr = np.asarray(samples)
    if arr.ndim != 1 or arr.size == 0:
        raise AudioShapeError(f"expected a recording (mono samples), got an array of shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise AudioShapeError("recording has non-finite samples (NaN or inf)")
    db = log_mel_db(windows(band_pass(arr.astype(np.float32), spec), spec), spec)
    scaled = np.clip((db - spec.lower_db) / (spec.upper_db - spec.lower_db), 0.0, 1.0)
    return scaled[:, None].astype(np.float32)


def db_range(recordings: list[np.ndarray], spec: AudioPreprocessing) -> tuple[float, float]:
    """The dB range mapped to [0, 1]: the 1st and 99.9th percentile over `recordings`' windows."""
    values = np.concatenate([log_mel_db(windows(band_pass(r, spec), spec), spec).ravel() for r in recordings])
    lower, upper = np.percentile(values, [1.0, 99.9])
    return float(lower), float(max(upper, lower + 1.0))


def per_recording(rows: pd.DataFrame, probs: np.ndarray, labels: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Windows' class probabilities averaged per recording (``image_id``), in the order recordings first
    appear: each recording's first row, its mean probabilities and its label."""
    import pandas as pd

    codes, unique = pd.factorize(rows["image_id"].to_numpy())
    sums = np.zeros((len(unique), probs.shape[1]))
    np.add.at(sums, codes, probs)
    first = np.unique(codes, return_index=True)[1]
    return rows.iloc[first].reset_index(drop=True), sums / np.bincount(codes)[:, None], labels[first]


class SpectrogramAugmentation:
    """Random, label-preserving changes to a batch of log-mel windows (N, 1, n_mels, T) in [0, 1].

    A circular time shift of up to `time_shift` of the frames, a gain (a shift of the whole
    spectrogram by up to `gain_db` in dB, as a share of the window's dB range), added Gaussian noise
    with `noise_probability`, and SpecAugment masks (Park et al. 2019): `freq_masks` bands of up to
    `freq_mask_bins` mel bins and `time_masks` spans of up to `time_mask_frames` frames set to the
    window's mean.
    """

    def __init__(self, cfg: AudioAugmentConfig, db_span: float, generator: torch.Generator):
        self.cfg, self.gain = cfg, cfg.gain_db / max(db_span, _EPS)
        self.generator = generator

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + torch.rand(n, generator=self.generator) * (high - low)

    def _masks(self, n: int, size: int, count: int, width: int) -> torch.Tensor:
        """(n, size) True where one of `count` random spans of up to `width` covers the position."""
        masked = torch.zeros(n, size, dtype=torch.bool)
        positions = torch.arange(size)
        for _ in range(count):
            w = (torch.rand(n, generator=self.generator) * (width + 1)).long()
            start = (torch.rand(n, generator=self.generator) * (size - w + 1).clamp(min=1)).long()
            masked |= (positions >= start[:, None]) & (positions < (start + w)[:, None])
        return masked

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        cfg, n = self.cfg, images.shape[0]
        if not cfg.enabled or n == 0:
            return images
        device, (mels, frames) = images.device, images.shape[-2:]
        limit = int(cfg.time_shift * frames)
        shifts = (self._uniform(n, -limit, limit + 1).floor().long() if limit else torch.zeros(n, dtype=torch.long))
        index = (torch.arange(frames)[None, :] - shifts[:, None]) % frames
        images = torch.gather(images, 3, index.to(device)[:, None, None, :].expand(-1, 1, mels, -1))
        images = images + self._uniform(n, -self.gain, self.gain).to(device).view(-1, 1, 1, 1)
        noisy = (torch.rand(n, generator=self.generator) < cfg.noise_probability).float().view(-1, 1, 1, 1)
        images = images + noisy.to(device) * torch.randn(images.shape, generator=self.generator).to(device) * cfg.noise_std
        mean = images.mean(dim=(2, 3), keepdim=True)
        freq = self._masks(n, mels, cfg.freq_masks, cfg.freq_mask_bins).to(device)[:, None, :, None]
        time = self._masks(n, frames, cfg.time_masks, cfg.time_mask_frames).to(device)[:, None, None, :]
        return torch.where(freq | time, mean, images).clamp(0.0, 1.0)


def mfcc_features(images: np.ndarray, n_mfcc: int = 13) -> np.ndarray:
    """MFCC and spectral statistics of log-mel windows (N, 1, n_mels, T) in [0, 1]: (N, F) float64.

    Per window: mean and standard deviation over time of `n_mfcc` cepstral coefficients (DCT-II of
    each frame's log-mel) and of their frame-to-frame deltas; the mel spectrum's centroid, spread
    and flatness (mean and std over time); the frame energy's mean, std and percentiles 10/50/90;
    the spectral flux's mean and std.
    """
    from scipy.fft import dct

    spec = images[:, 0].astype(np.float64)  # (N, M, T)
    n, mels, frames = spec.shape
    cep = dct(spec, type=2, axis=1, norm="ortho")[:, :n_mfcc]
    delta = np.diff(cep, axis=2) if frames > 1 else np.zeros_like(cep)
    power = np.maximum(spec, _EPS)
    bins = np.arange(mels, dtype=np.float64)[None, :, None]
    total = power.sum(axis=1, keepdims=True)
    centroid = (power * bins).sum(axis=1, keepdims=True) / total
    spread = np.sqrt((power * (bins - centroid) ** 2).sum(axis=1) / total[:, 0])
    flatness = np.exp(np.log(power).mean(axis=1)) / power.mean(axis=1)
    energy = spec.mean(axis=1)
    flux = np.abs(np.diff(spec, axis=2)).mean(axis=1) if frames > 1 else np.zeros((n, 1))
    stats = [cep.mean(axis=2), cep.std(axis=2), delta.mean(axis=2), delta.std(axis=2)]
    for series in (centroid[:, 0], spread, flatness, energy, flux):
        stats.append(np.column_stack([series.mean(axis=1), series.std(axis=1)]))
    stats.append(np.percentile(energy, [10, 50, 90], axis=1).T)
    return np.column_stack(stats)


def is_audio(preprocessing: dict[str, Any]) -> bool:
    """Whether a stored preprocessing (dataset.json's, a model spec's) is that of recordings."""
    return preprocessing.get("kind") == "audio"

