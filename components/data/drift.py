"""drift: how a new dataset differs from the one the production model was trained on.

Compares two manifests (docs/manifest.md), never pixels: class balance (each class's share of the
images), the intensity distribution (Kolmogorov-Smirnov distance between the per-image mean
intensities, plus the shift of the pooled mean), image size (relative change of the median height,
width and depth) and per-site counts (each site's share, where both manifests have a ``site``
column; site pseudonyms are stable for one de-identification salt).

Every difference is reported. A statistic over a bound set in params.yaml's ``drift`` section is
``exceeded``: validate then fails the dataset, unless ``drift.require_retraining`` is set, in which
case it is a warning and the flow marks the run instead (the gate then requires retraining).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.config import DriftConfig


@dataclass(frozen=True)
class DriftCheck:
    """One drift statistic against its bound (None: reported, never blocking)."""

    name: str  # class_share | intensity_ks | size_change | site_share
    value: float | None  # None where it cannot be computed (e.g. no site column)
    bound: float | None
    detail: str

    @property
    def exceeded(self) -> bool:
        return self.bound is not None and self.value is not None and self.value > self.bound


@dataclass(frozen=True)
class DriftReport:
    """Drift of the current dataset against a baseline, with the per-class/site/size tables behind it."""

    baseline: str  # which dataset the baseline is (model and dataset version)
    checks: tuple[DriftCheck, ...]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # False with drift.require_retraining: an exceeded bound marks the run instead of failing validation.
    blocks_validation: bool = True

    @property
    def exceeded(self) -> tuple[DriftCheck, ...]:
        """The statistics over their bound."""
        return tuple(c for c in self.checks if c.exceeded)

    @property
    def blocking(self) -> tuple[DriftCheck, ...]:
        """The statistics over their bound that fail validation."""
        return self.exceeded if self.blocks_validation else ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "checks": [{**asdict(c), "exceeded": c.exceeded} for c in self.checks],
            "tables": self.tables,
            "blocks_validation": self.blocks_validation,
        }


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs (0 to 1)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if not len(a) or not len(b):
        return float("nan")
    grid = np.concatenate([a, b])
    gap = np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(gap).max())


def _shares(baseline: pd.Series, current: pd.Series, name: str) -> tuple[float, list[dict[str, Any]]]:
    """Largest absolute change of a value's share, and the table of counts and shares."""
    b, c = baseline.astype(str).value_counts(), current.astype(str).value_counts()
    rows = []
    for key in sorted(set(b.index) | set(c.index)):
        nb, nc = int(b.get(key, 0)), int(c.get(key, 0))
        sb, sc = nb / max(len(baseline), 1), nc / max(len(current), 1)
        rows.append({name: key, "baseline_count": nb, "current_count": nc, "baseline_share": round(sb, 4),
                     "current_share": round(sc, 4), "change": round(sc - sb, 4)})
    return max((abs(r["change"]) for r in rows), default=0.0), rows


def compare_manifests(baseline: pd.DataFrame, current: pd.DataFrame, cfg: DriftConfig, baseline_name: str) -> DriftReport:
    """Drift statistics of `current` against `baseline` (two ingest manifests).

    Args:
        baseline: the manifest of the dataset the production model trained on.
        current: the new dataset's manifest.
        cfg: params.yaml's drift section (bounds; None: report only).
        baseline_name: how the report names the baseline (e.g. ``ct-lesion v2, dataset 1a2b3c4d``).
    """
    checks: list[DriftCheck] = []
    tables: dict[str, list[dict[str, Any]]] = {}

    change, tables["classes"] = _shares(baseline["label"], current["label"], "label")
    worst = max(tables["classes"], key=lambda r: abs(r["change"]), default=None)
    checks.append(DriftCheck("class_share", round(change, 4), cfg.max_class_share_change,
                             f"largest change: class {worst['label']!r} {worst['baseline_share']:.3f} -> "
                             f"{worst['current_share']:.3f}" if worst else "no classes"))

    b_mean, c_mean = baseline["intensity_mean"].to_numpy(), current["intensity_mean"].to_numpy()
    ks = ks_distance(b_mean, c_mean)
    pooled_std = float(np.sqrt(np.mean(baseline["intensity_std"] ** 2) + np.var(b_mean))) or 1.0
    shift = (float(c_mean.mean()) - float(b_mean.mean())) / pooled_std
    tables["intensity"] = [
        {"dataset": name, "images": len(df), "mean": round(float(df["intensity_mean"].mean()), 3),
         "median_of_image_means": round(float(df["intensity_mean"].median()), 3),
         "min": round(float(df["intensity_min"].min()), 3), "max": round(float(df["intensity_max"].max()), 3)}
        for name, df in (("baseline", baseline), ("current", current))
    ]
    checks.append(DriftCheck("intensity_ks", round(ks, 4), cfg.max_intensity_ks,
                             f"pooled mean moved by {shift:+.2f} baseline standard deviations"))

    sizes: list[dict[str, Any]] = []
    for column in ("height", "width", "depth"):
        b, c = float(baseline[column].median()), float(current[column].median())
        sizes.append({"dimension": column, "baseline_median": b, "current_median": c,
                      "relative_change": round(c / b - 1.0, 4) if b else None})
    tables["size"] = sizes
    size_change = max((abs(s["relative_change"]) for s in sizes if s["relative_change"] is not None), default=0.0)
    checks.append(DriftCheck("size_change", round(size_change, 4), cfg.max_size_change,
                             ", ".join(f"{s['dimension']} {s['baseline_median']:g} -> {s['current_median']:g}" for s in sizes)))

    if "site" in baseline and "site" in current:
        site_change, tables["sites"] = _shares(baseline["site"].fillna("unknown"), current["site"].fillna("unknown"), "site")
        checks.append(DriftCheck("site_share", round(site_change, 4), cfg.max_site_share_change,
                                 f"{len(tables['sites'])} site(s) in either dataset"))
    else:
        checks.append(DriftCheck("site_share", None, cfg.max_site_share_change, "no site column in one of the datasets"))
    return DriftReport(baseline_name, tuple(checks), tables, blocks_validation=not cfg.require_retraining)
