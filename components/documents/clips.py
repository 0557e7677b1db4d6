"""The data-quality report's section for clip datasets: a filmstrip per class and the clips' histograms.

Filmstrips show stored frames, that is after `ingest.video.mask` blacked out its regions: what a
reviewer sees is what was kept. Histograms: duration, frame rate and frame count of the source clips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from components.documents.html import escape, figure, png_img, svg

if TYPE_CHECKING:
    from PIL.Image import Image

STRIP_FRAMES = 6  # frames shown per clip, spread over the stored ones
_HISTOGRAMS = (("duration_s", "duration (s)"), ("fps", "frames per second"), ("frames", "frames in the source clip"))


def clip_section(manifest: pd.DataFrame, load: Callable[[str], np.ndarray], per_class: int) -> str:
    """HTML: filmstrips of up to `per_class` clips per class (stored frames, after masking), then
    histograms of the clip columns per class."""
    clips = manifest[manifest["frames"].notna()]
    strips = []
    for label, rows in clips.sort_values("image_id").groupby(clips["label"].astype(str)):
        pick = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, num=min(max(per_class // 2, 1), len(rows))).round().astype(int))]
        shown = []
        for rel in pick["path"]:
            try:
                shown.append(png_img(_strip(load(rel))))
            except (OSError, ValueError, KeyError) as exc:  # a report must show what it can
                shown.append(f"<span class=muted>{escape(type(exc).__name__)}</span>")
        strips.append(f"<h3>{escape(label)}</h3><div class=thumbs>{'<br>'.join(shown)}</div>")
    return (f"<h2>Clips: a filmstrip per class</h2><p>{STRIP_FRAMES} of each clip's stored frames, left to right, "
            f"after masking.</p>{''.join(strips)}<h2>Clips: duration, frame rate, frame count</h2>"
            f"<div class=charts>{_histograms(clips)}</div>")


def _strip(clip: np.ndarray, height: int = 64) -> Image:
    """`STRIP_FRAMES` frames of a stored clip side by side, `height` pixels high."""
    from PIL import Image

    frames = clip[np.linspace(0, len(clip) - 1, num=min(STRIP_FRAMES, len(clip))).round().astype(int)]
    row = np.concatenate(list(frames), axis=1).astype(np.uint8)
    img = Image.fromarray(row)
    scale = height / row.shape[0]
    return img.resize((max(1, round(row.shape[1] * scale)), height), Image.Resampling.NEAREST)


def _histograms(clips: pd.DataFrame) -> str:
    from matplotlib.figure import Figure

    charts = []
    for column, title in _HISTOGRAMS:
        if column not in clips or clips[column].isna().all():
            continue
        fig = Figure(figsize=(3.4, 2.4))
        ax = fig.subplots()
        for label, values in clips.groupby(clips["label"].astype(str))[column]:
            ax.hist(values.dropna().astype(float), bins=20, histtype="step", label=str(label))
        ax.set_xlabel(title)
        ax.set_ylabel("clips")
        ax.legend(fontsize=7)
        charts.append(figure(svg(fig), escape(f"{title} per class")))
    return "".join(charts)
