"""The data-quality report's pictures of recordings: duration and level histograms, and per class a
spectrogram and a waveform of a few recordings, as PNG images. Never the sound itself: a voice
identifies its speaker, so no report embeds playable audio."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import numpy as np
import pandas as pd

from components.config import ValidateConfig
from components.documents.html import escape, svg

_SHOWN_S = 10.0  # seconds of each recording drawn
_WIDTH, _HEIGHT = 240, 64


def _png(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def spectrogram_image(samples: np.ndarray, rate: int) -> np.ndarray:
    """8-bit grey (frequency up, time right) of the first seconds: power in dB over 80 dB below its peak."""
    from scipy.signal import spectrogram

    shown = samples[: int(_SHOWN_S * rate)]
    nperseg = min(256, max(16, len(shown)))
    _, _, power = spectrogram(shown, fs=rate, nperseg=nperseg, noverlap=nperseg * 3 // 4)
    db = 10 * np.log10(power + 1e-12)
    scaled = np.clip((db - db.max() + 80) / 80, 0, 1)[::-1]
    from PIL import Image

    img = Image.fromarray((scaled * 255).astype(np.uint8)).resize((_WIDTH, _HEIGHT), Image.Resampling.BILINEAR)
    return np.asarray(img)


def waveform_image(samples: np.ndarray, rate: int) -> np.ndarray:
    """8-bit grey of the first seconds' envelope: each column spans its samples' minimum to maximum."""
    shown = samples[: int(_SHOWN_S * rate)]
    columns = np.array_split(shown, _WIDTH) if len(shown) >= _WIDTH else [shown[i:i + 1] for i in range(len(shown))]
    img = np.full((_HEIGHT, _WIDTH), 255, np.uint8)
    rows = lambda v: int(np.clip(round((1 - v) / 2 * (_HEIGHT - 1)), 0, _HEIGHT - 1))  # noqa: E731
    for x, part in enumerate(columns):
        if part.size:
            img[rows(float(part.max())):rows(float(part.min())) + 1, x] = 40
    img[_HEIGHT // 2, :] = np.minimum(img[_HEIGHT // 2, :], 180)
    return img


def _histograms(manifest: pd.DataFrame) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.0))
    axes = fig.subplots(1, 2)
    for ax, column, label in ((axes[0], "duration_s", "duration (s)"), (axes[1], "peak_dbfs", "peak level (dBFS)")):
        values = manifest[column].astype(float)
        edges = np.histogram_bin_edges(values, bins=30)
        for name, group in manifest.groupby(manifest["label"].astype(str)):
            ax.hist(group[column].astype(float), bins=edges, histtype="step", label=str(name))
        ax.set_xlabel(label)
        ax.set_ylabel("recordings")
    axes[0].legend(fontsize=8)
    return svg(fig)


def recording_pictures(manifest: pd.DataFrame, samples_by_class: dict[str, pd.DataFrame],
                       load: Callable[[str], np.ndarray], cfg: ValidateConfig, rate: int) -> str:
    """The report's sections for recordings (histograms, then per class spectrograms and waveforms).

    Args:
        samples_by_class: the rows drawn per class (their first `cfg.thumbnails_per_class` are shown).
        rate: the stored samples' rate (Hz).
    """
    grid = []
    for label, rows in samples_by_class.items():
        cells = []
        for rel in list(rows["path"])[: cfg.thumbnails_per_class]:
            try:
                samples = load(rel)
            except (OSError, ValueError, KeyError) as exc:  # a report must show what it can
                cells.append(f"<span class=muted>{escape(type(exc).__name__)}</span>")
                continue
            cells.append(f"<div>{_png(spectrogram_image(samples, rate))}<br>{_png(waveform_image(samples, rate))}</div>")
        grid.append(f"<h3>{escape(label)}</h3><div class=thumbs>{''.join(cells)}</div>")
    return (f"<h2>Durations and levels per class</h2><figure>{_histograms(manifest)}</figure>"
            f"<h2>Spectrograms and waveforms per class</h2><p>The first {_SHOWN_S:g} s of each: spectrogram "
            f"(0 Hz to {rate // 2} Hz upwards) above its waveform. Recordings are shown as images only, never "
            f"as playable audio.</p>{''.join(grid)}")
