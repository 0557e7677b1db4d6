"""The data-quality report: one self-contained HTML page a person reviews before anything trains.

Renders offline (inline CSS, SVG charts, PNG thumbnails as data URIs; Great Expectations' own Data
Docs load their styles from the network): the verdict first, each check with its observed value and
offending files, class balance per split, intensity histograms and thumbnails per class, drift, and
the inputs ingest skipped. The content comes from components.stages.validate's summary (the same
as its report.json) and a few images per class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from components.config import ValidateConfig
from components.data.manifest import AUDIO_RATE_ATTR, SPLITS
from components.documents.audio_quality import recording_pictures
from components.documents.clips import clip_section
from components.documents.html import STYLE, escape, png_img, svg, table

# Loads a stored image by its manifest path (components.data.shards.ImageStore.load).
ImageLoader = Callable[[str], np.ndarray]


def render_report(summary: dict[str, Any], manifest: pd.DataFrame, load: ImageLoader, cfg: ValidateConfig,
                  checks: Mapping[str, str], window: tuple[float, float] | None = None) -> str:
    """The self-contained HTML page (see the module docstring for its sections).

    Args:
        summary: validate's summary (verdict, statistics, expectations, drift, skipped inputs).
        manifest: the validated manifest; a few images per class are loaded with `load`.
        load: reads a stored image by its manifest `path`.
        cfg: the validate section of params.yaml (how many files, histogram images, thumbnails).
        checks: what each check asserts, by check name, as the report says it.
        window: (level, width) in Hounsfield units for CT thumbnails.
    """
    e = escape
    verdict = summary["verdict"]
    stats = summary["statistics"]
    badge = {"failed": "refuse", "passed with warnings": "warn"}.get(verdict, "promote")
    counts = [f"{stats['rows']} images of {stats['patients']} patients",
              f"{len(stats['class_counts'])} classes",
              f"{stats['skipped_inputs']} input(s) skipped at intake"]
    counts += _burned_in_lines(stats.get("burned_in_risk") or {})
    headline = "".join(f"<li>{e(x)}</li>" for x in summary["failed_expectations"]) or "<li>none</li>"
    warn_list = "".join(f"<li>{e(x)}</li>" for x in summary["warnings"]) or "<li>none</li>"
    pictures = _pictures(manifest, load, cfg, window)
    skipped = table(["file", "reason"], [[e(p.get("file", "")), e(p.get("reason", ""))] for p in summary["skipped_inputs"]]) \
        if summary["skipped_inputs"] else "<p>none</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>medgate data quality: {e(verdict)}</title>
<style>{STYLE}td{{text-align:left;vertical-align:top}}.warn{{background:#fff4d6;color:#7a5300}}
.thumbs{{display:flex;flex-wrap:wrap;gap:4px}}.thumbs img{{image-rendering:pixelated;border:1px solid #ccc}}</style></head><body>
<h1>Data quality</h1><div class="verdict {badge}">{e(verdict.upper())}</div>
<ul>{''.join(f'<li>{e(c)}</li>' for c in counts)}</ul>
<h2>Blocking failures</h2><ul>{headline}</ul>
<h2>Warnings</h2><ul>{warn_list}</ul>
<h2>Checks</h2>{_checks_table(summary["expectations"], checks, cfg.max_listed_files)}
<h2>Class balance per split</h2>{_balance_table(stats)}
{pictures}
{clip_section(manifest, load, cfg.thumbnails_per_class) if "frames" in manifest else ""}
{_drift_section(summary.get("drift"), summary.get("drift_note", ""))}
<h2>Inputs skipped at intake</h2>{skipped}
</body></html>"""


def _checks_table(outcomes: list[dict[str, Any]], checks: Mapping[str, str], max_files: int) -> str:
    e = escape
    rows = []
    rank = {"blocking": 0, "warning": 1}  # failures first, blocking before warnings; then the passes
    for o in sorted(outcomes, key=lambda o: (o["success"], rank.get(o["severity"], 2))):
        verdict_cell = "pass" if o["success"] else "FAIL" if o["severity"] == "blocking" else "warn" if o["severity"] == "warning" else "note"
        css = "pass" if o["success"] else "fail" if o["severity"] == "blocking" else "muted"
        files = o["offending"][:max_files]
        more = len(o["offending"]) - len(files)
        listed = "<br>".join(e(f) for f in files) + (f"<br><i>... and {more} more (report.json lists all)</i>" if more > 0 else "")
        note = e(o.get("detail") or o.get("error") or "")
        rows.append([f"<span class={css}>{verdict_cell}</span>", e(o["check"]), e(o["severity"]),
                     e(checks.get(o["check"], o["check"].replace("_", " "))) + f"<br><code>{e(o['expectation'])}</code>",
                     e(_short(o["observed"])), listed + (f"<br>{note}" if note else "")])
    return table(["verdict", "check", "severity", "what", "observed", "offending files / detail"], rows)


def _balance_table(stats: dict[str, Any]) -> str:
    by_split = stats["class_counts_by_split"]
    labels = sorted(stats["class_counts"])
    order = SPLITS + ("unsplit",)
    return table(["split", *map(escape, labels), "total"], [
        [escape(s), *[str(by_split[s].get(lab, 0)) for lab in labels], str(sum(by_split[s].values()))]
        for s in sorted(by_split, key=lambda s: order.index(s) if s in order else 9)
    ])
def _samples(manifest: pd.DataFrame, per_class: int) -> dict[str, pd.DataFrame]:
    """Up to `per_class` rows per class, spread evenly over the class in image-id order (deterministic)."""
    out = {}
    for label, rows in manifest.sort_values("image_id").groupby(manifest["label"].astype(str)):
        pick = np.unique(np.linspace(0, len(rows) - 1, num=min(per_class, len(rows))).round().astype(int))
        out[str(label)] = rows.iloc[pick]
    return out


def _display(arr: np.ndarray, lower: float | None, upper: float | None) -> np.ndarray:
    """A stored image as 8-bit grey or RGB for a thumbnail: volumes by their middle slice, CT through
    the window, anything else stretched from its own range."""
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 3:
        return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)
    values = arr.astype(np.float32)
    lo, hi = (lower, upper) if lower is not None and upper is not None else (float(values.min()), float(values.max()))
    scaled = (np.clip(values, lo, hi) - lo) / max(hi - lo, 1e-6)
    return (scaled * 255).round().astype(np.uint8)


def _thumbnail(arr: np.ndarray, size: int = 96) -> str:
    from PIL import Image

    img = Image.fromarray(arr)
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    if min(img.size) < size // 2:  # tiny images (28 px MedMNIST) are enlarged, not blurred
        scale = max(1, size // max(img.size))
        img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.Resampling.NEAREST)
    return png_img(img)


def _pictures(manifest: pd.DataFrame, load: ImageLoader, cfg: ValidateConfig, window: tuple[float, float] | None) -> str:
    """The histogram and thumbnail sections, from up to a few dozen images (or recordings) per class."""
    from matplotlib.figure import Figure

    per_class = max(cfg.histogram_images_per_class, cfg.thumbnails_per_class)
    samples = _samples(manifest, per_class)
    if AUDIO_RATE_ATTR in manifest.attrs:
        return recording_pictures(manifest, samples, load, cfg, int(manifest.attrs[AUDIO_RATE_ATTR]))
    ct = "modality" in manifest and bool((manifest["modality"] == "CT").all())
    lower = upper = None
    if ct and window is not None:
        lower, upper = window[0] - window[1] / 2, window[0] + window[1] / 2
    pixels: dict[str, np.ndarray] = {}
    grid = []
    for label, rows in samples.items():
        values, thumbs = [], []
        for i, rel in enumerate(rows["path"]):
            try:
                arr = load(rel)
            except (OSError, ValueError, KeyError) as exc:  # a report must show what it can
                thumbs.append(f"<span class=muted>{escape(type(exc).__name__)}</span>")
                continue
            if i < cfg.histogram_images_per_class:
                values.append(arr.astype(np.float32).ravel()[:: max(1, arr.size // 4096)])
            if len(thumbs) < cfg.thumbnails_per_class:
                thumbs.append(_thumbnail(_display(arr, lower, upper)))
        pixels[label] = np.concatenate(values) if values else np.zeros(0, np.float32)
        grid.append(f"<h3>{escape(label)}</h3><div class=thumbs>{''.join(thumbs)}</div>")
    everything = np.concatenate([v for v in pixels.values() if v.size]) if any(v.size for v in pixels.values()) else np.zeros(1)
    lo, hi = np.percentile(everything, [0.5, 99.5]) if everything.size > 1 else (0.0, 1.0)
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.subplots()
    for label, sample in pixels.items():
        if sample.size:
            ax.hist(sample, bins=60, range=(float(lo), float(max(hi, lo + 1e-6))), histtype="step", density=True, label=label)
    ax.set_xlabel("stored intensity" + (" (HU)" if ct else ""))
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return (f"<h2>Intensity histograms per class</h2><figure>{svg(fig)}<figcaption>Stored intensities of up to "
            f"{cfg.histogram_images_per_class} images per class.</figcaption></figure>"
            f"<h2>Thumbnails per class</h2>{''.join(grid)}")


def _drift_section(drift: dict[str, Any] | None, note: str) -> str:
    e = escape
    if not drift:
        return f"<h2>Drift</h2><p class=muted>Not computed: {e(note or 'no baseline given')}.</p>"
    parts = [f"<h2>Drift against {e(drift['baseline'])}</h2>"]
    parts.append(table(["statistic", "value", "bound", "verdict", "detail"], [
        [e(c["name"]), e(_short(c["value"])), e(_short(c["bound"])),
         "<span class=fail>EXCEEDED</span>" if c["exceeded"] else "reported" if c["bound"] is None else "<span class=pass>within</span>",
         e(c["detail"])] for c in drift["checks"]]))
    for name, rows in drift["tables"].items():
        if rows:
            header = list(rows[0])
            parts.append(f"<h3>{e(name)}</h3>" + table([e(h) for h in header], [[e(_short(r[h])) for h in header] for r in rows]))
    return "".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value) if value is not None else "-"
    return text if len(text) <= 160 else text[:157] + "..."


def _burned_in_lines(risks: dict[str, int]) -> list[str]:
    """What the report says of the files taken despite a risk of burned-in text (the manifest's
    ``burned_in_risk`` counts: ``PNG``, or ``VIDEO masked`` for a clip the mask covered)."""
    masked = {k.removesuffix(" masked"): v for k, v in risks.items() if k.endswith(" masked")}
    accepted = {k: v for k, v in risks.items() if not k.endswith(" masked")}

    def listed(counts: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))

    lines = []
    if accepted:
        lines.append(f"{sum(accepted.values())} file(s) that may carry burned-in text accepted by "
                     f"ingest.accept_burned_in_risk ({listed(accepted)}); no OCR checked them")
    if masked:
        lines.append(f"{sum(masked.values())} clip(s) that may carry burned-in text taken with ingest.video.mask "
                     f"blacking out its regions in every frame ({listed(masked)}); no OCR checked the rest of each frame")
    return lines
