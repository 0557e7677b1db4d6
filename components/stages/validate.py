"""validate: Great Expectations suites over the manifest, and the report a person reviews.

Two suites run on an ephemeral GX context: one over the images (the manifest plus derived
columns: how many splits each patient's images fall in, how many splits or patients share each
image's pixels, the intensity bounds of each row's modality) and one over the classes (each class's
count and share). Every expectation belongs to a named check (`CHECKS`); params.yaml's
``validate.severity`` says which checks block the run and which are warnings. Drift against the
production model's training data (components.data.drift) joins the verdict: a drift statistic over
its configured bound blocks too (a warning with ``drift.require_retraining``).

Writes under ``out_dir``: ``report.html``, one self-contained page that renders offline (inline
CSS, SVG charts, PNG thumbnails as data URIs; GX's own Data Docs load their styles from the
network): the verdict first, each check with its observed value and offending files (source file
names from ingest's sources.csv), class balance per split, intensity histograms and thumbnails per
class, drift, and the inputs ingest skipped; and ``report.json``, the same for machines.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.artifacts import ValidationResult, content_digest, read_keyed_json, write_json_atomically
from components.data.manifest import MANIFEST_COLUMNS, SPLITS
from components.config import ValidateConfig
from components.data.drift import DriftReport

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"

# What each check asserts, as the report says it.
CHECKS: dict[str, str] = {
    "schema": "manifest columns exist with the contract's types",
    "not_null": "image ids, patient ids, labels, paths and content hashes are present",
    "unique_image_ids": "no two rows share an image id",
    "row_count": "the number of images lies within the configured bounds",
    "label_set": "the labels are exactly the configured classes (at least two classes when none are configured)",
    "class_balance": "each class's share of the images lies within the configured bounds",
    "splits": "split is train, val or test where the source fixes it",
    "patient_leakage": "no patient has images in more than one split",
    "duplicates_across_splits": "no image's pixels appear in two splits (before splitting: in two patients)",
    "duplicate_images": "no image's pixels appear twice",
    "image_kind": "one image kind: the same spatial dimensions and channels throughout",
    "image_size": "height, width and depth lie within the configured bounds",
    "dtype": "stored pixel dtypes are in the allowed set",
    "spacing": "pixel and slice spacing (mm) lie within the configured bounds",
    "intensity_range": "each image's intensities lie within its modality's range",
    "constant_images": "no image is constant (a constant image usually means a broken export)",
    "modality": "DICOM modality is in the allowed set",
    "photometric": "DICOM photometric interpretation is in the allowed set",
}
_GX_TYPES = {"string": "str", "int64": "int64", "float64": "float64"}


def _expectations(cfg: ValidateConfig, columns: Sequence[str], class_names: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """The image suite's and the class suite's expectations, each tagged with its check and severity."""
    import great_expectations.expectations as gxe

    def tag(check: str, expectation_type: Any, **kwargs: Any) -> Any:
        severity = "critical" if cfg.severity[check] == "blocking" else "warning"
        return expectation_type(**kwargs, severity=severity, meta={"check": check})

    images: list[Any] = []
    for column, dtype in MANIFEST_COLUMNS.items():
        images.append(tag("schema", gxe.ExpectColumnToExist, column=column))
        if column in columns:
            images.append(tag("schema", gxe.ExpectColumnValuesToBeOfType, column=column, type_=_GX_TYPES[dtype]))
    present = [c for c in MANIFEST_COLUMNS if c in columns]
    images += [tag("not_null", gxe.ExpectColumnValuesToNotBeNull, column=c)
               for c in ("image_id", "patient_id", "label", "path", "content_hash") if c in present]
    if "image_id" in columns:
        images.append(tag("unique_image_ids", gxe.ExpectColumnValuesToBeUnique, column="image_id"))
    images.append(tag("row_count", gxe.ExpectTableRowCountToBeBetween, min_value=cfg.min_rows, max_value=cfg.max_rows))
    if "label" in columns:
        images.append(tag("label_set", gxe.ExpectColumnDistinctValuesToEqualSet, column="label", value_set=list(class_names))
                      if class_names else tag("label_set", gxe.ExpectColumnUniqueValueCountToBeBetween, column="label", min_value=2))
    if "split" in columns:
        images.append(tag("splits", gxe.ExpectColumnValuesToBeInSet, column="split", value_set=list(SPLITS)))
    if {"patient_splits", "hash_groups", "content_hash"} <= set(columns):
        images.append(tag("patient_leakage", gxe.ExpectColumnValuesToBeBetween, column="patient_splits", max_value=1))
        images.append(tag("duplicates_across_splits", gxe.ExpectColumnValuesToBeBetween, column="hash_groups", max_value=1))
        images.append(tag("duplicate_images", gxe.ExpectColumnValuesToBeUnique, column="content_hash"))
    if {"ndim", "channels"} <= set(columns):
        images += [tag("image_kind", gxe.ExpectColumnUniqueValueCountToBeBetween, column=c, min_value=1, max_value=1)
                   for c in ("ndim", "channels")]
        images.append(tag("image_kind", gxe.ExpectColumnValuesToBeInSet, column="ndim", value_set=[2, 3]))
    images += [tag("image_size", gxe.ExpectColumnValuesToBeBetween, column=c, min_value=cfg.min_size, max_value=cfg.max_size)
               for c in ("height", "width") if c in columns]
    if "depth" in columns:
        images.append(tag("image_size", gxe.ExpectColumnValuesToBeBetween, column="depth", min_value=1, max_value=cfg.max_size))
    if "dtype" in columns:
        images.append(tag("dtype", gxe.ExpectColumnValuesToBeInSet, column="dtype", value_set=list(cfg.dtypes)))
    images += [tag("spacing", gxe.ExpectColumnValuesToBeBetween, column=c, min_value=cfg.spacing_mm.lower, max_value=cfg.spacing_mm.upper)
               for c in ("spacing_d", "spacing_h", "spacing_w") if c in columns]
    if {"intensity_floor", "intensity_min"} <= set(columns):
        images.append(tag("intensity_range", gxe.ExpectColumnPairValuesAToBeGreaterThanB, column_A="intensity_min",
                          column_B="intensity_floor", or_equal=True, ignore_row_if="either_value_is_missing"))
        images.append(tag("intensity_range", gxe.ExpectColumnPairValuesAToBeGreaterThanB, column_A="intensity_ceiling",
                          column_B="intensity_max", or_equal=True, ignore_row_if="either_value_is_missing"))
    if "intensity_std" in columns:
        images.append(tag("constant_images", gxe.ExpectColumnValuesToBeBetween, column="intensity_std", min_value=0, strict_min=True))
    if "modality" in columns:
        images.append(tag("modality", gxe.ExpectColumnValuesToBeInSet, column="modality", value_set=list(cfg.modalities)))
    if "photometric" in columns:
        images.append(tag("photometric", gxe.ExpectColumnValuesToBeInSet, column="photometric", value_set=list(cfg.photometric)))
    classes = [tag("class_balance", gxe.ExpectColumnValuesToBeBetween, column="fraction",
                   min_value=cfg.min_class_fraction, max_value=cfg.max_class_fraction)]
    return images, classes


def validation_frames(manifest: pd.DataFrame, cfg: ValidateConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frames the suites run on: the manifest with derived columns, and one row per class.

    Derived columns: ``patient_splits`` (distinct splits among the patient's images),
    ``hash_groups`` (distinct splits among images with the same pixels; where the source fixes no
    split, distinct patients, since prepare may put two patients in different splits), and
    ``intensity_floor``/``intensity_ceiling`` (the row's modality's range, else ``default``).
    """
    frame = manifest.copy()
    if {"patient_id", "split", "content_hash"} <= set(frame.columns):
        frame["patient_splits"] = frame.groupby("patient_id", dropna=False)["split"].transform("nunique").astype("int64")
        group = frame["split"].astype("object").where(frame["split"].notna(), "patient:" + frame["patient_id"].astype(str))
        frame["hash_groups"] = group.groupby(frame["content_hash"]).transform("nunique").astype("int64")
    if "intensity_min" in frame.columns:
        default = cfg.intensity.get("default")
        modality = frame["modality"] if "modality" in frame.columns else pd.Series(pd.NA, index=frame.index, dtype="string")

        def bound(side: str) -> pd.Series:
            values = {m: getattr(b, side) for m, b in cfg.intensity.items() if getattr(b, side) is not None}
            fallback = getattr(default, side) if default is not None else None
            mapped = modality.astype("object").map(values)
            return mapped.fillna(np.nan if fallback is None else fallback).astype("float64")

        frame["intensity_floor"], frame["intensity_ceiling"] = bound("lower"), bound("upper")
    counts = frame["label"].astype(str).value_counts() if "label" in frame.columns else pd.Series(dtype="int64")
    classes = pd.DataFrame({"label": counts.index.astype(str), "count": counts.to_numpy(dtype="int64"),
                            "fraction": (counts / max(len(frame), 1)).to_numpy(dtype="float64")})
    return frame, classes


def run_suites(manifest: pd.DataFrame, cfg: ValidateConfig, class_names: Sequence[str] = (),
               sources: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Run both suites on an ephemeral GX context; one dict per expectation, in suite order.

    Each dict: ``check``, ``severity`` (blocking | warning), ``success``, ``expectation`` (GX type
    and arguments), ``observed``, ``unexpected_count``, ``offending`` (source files, or class names
    for class balance; every one, sorted) and ``error`` (a GX exception message, if any).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ["great_expectations", *logging.root.manager.loggerDict]:  # GX sets INFO on some of its loggers
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.ERROR)
    images, classes = validation_frames(manifest, cfg)
    image_expectations, class_expectations = _expectations(cfg, list(images.columns), class_names)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("manifest")
    outcomes: list[dict[str, Any]] = []
    for name, frame, expectations, index in (("images", images, image_expectations, "image_id"),
                                             ("classes", classes, class_expectations, "label")):
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        result_format: Any = {"result_format": "COMPLETE", "unexpected_index_column_names": [index]} if index in frame else "SUMMARY"
        result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format).to_json_dict()
        by_id = {r["expectation_config"]["id"]: r for r in result["results"]}
        for expectation in suite.expectations:  # GX returns results in its own order
            outcomes.append(_outcome(by_id[expectation.id], index, sources or {}))
    for o in outcomes:  # GX reports no observed value for a set comparison: show the set
        if o["expectation"].startswith("expect_column_distinct_values_to_equal_set"):
            o["observed"] = sorted(images["label"].dropna().astype(str).unique())
    return outcomes


def _outcome(r: dict[str, Any], index: str, sources: Mapping[str, str]) -> dict[str, Any]:
    config = r["expectation_config"]
    res = r.get("result") or {}
    keys = {str(row.get(index)) for row in (res.get("unexpected_index_list") or []) if isinstance(row, dict)}
    offending = sorted(sources.get(k, k) for k in keys) if index == "image_id" else sorted(keys)
    if config["type"] == "expect_column_distinct_values_to_equal_set":
        offending = [f"unexpected label {v!r}" for v in res.get("partial_unexpected_list") or []]
        offending += [f"missing label {v!r}" for v in res.get("partial_missing_list") or []]
    observed = res.get("observed_value")
    if observed is None and res.get("unexpected_count") is not None:
        observed = f"{res['unexpected_count']} unexpected ({res.get('unexpected_percent') or 0:.2f}%)"
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    return {
        "check": config["meta"]["check"],
        "severity": "blocking" if config.get("severity") == "critical" else "warning",
        "success": bool(r["success"]),
        "expectation": f"{config['type']}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})",
        "observed": observed,
        "unexpected_count": res.get("unexpected_count"),
        "offending": offending,
        "error": (r.get("exception_info") or {}).get("exception_message"),
    }


def _drift_outcomes(drift: DriftReport) -> list[dict[str, Any]]:
    return [{
        "check": f"drift_{c.name}",
        "severity": "report" if c.bound is None else "blocking" if drift.blocks_validation else "warning",
        "success": not c.exceeded,
        "expectation": f"drift {c.name} <= {c.bound}" if c.bound is not None else f"drift {c.name} (no bound: reported only)",
        "observed": c.value,
        "unexpected_count": None,
        "offending": [],
        "error": None,
        "detail": c.detail,
    } for c in drift.checks]


def _read_sources(root: Path) -> dict[str, str]:
    path = root / "sources.csv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return dict(zip(table["image_id"], table["source"], strict=True))


def validate_manifest(manifest_path: Path, cfg: ValidateConfig, out_dir: Path,
                      problems: Sequence[Mapping[str, str]] | None = None, *, class_names: Sequence[str] = (),
                      drift: DriftReport | None = None, drift_note: str = "",
                      window: tuple[float, float] | None = None, memo_file: Path | None = None) -> ValidationResult:
    """Validate the manifest and write report.html and report.json under `out_dir`.

    Args:
        manifest_path: ingest's manifest.parquet (its images and sources.csv beside it).
        cfg: the validate section of params.yaml.
        out_dir: where the report goes.
        problems: the inputs ingest skipped (``{"file", "reason"}``), listed in the report.
        class_names: the configured classes (ingest.class_names); empty: at least two classes.
        drift: drift against the production model's training data, if there is one.
        drift_note: why there is no drift report (shown in its place).
        window: (level, width) in Hounsfield units for CT thumbnails (prepare's window).
        memo_file: where the suites' last outcomes are kept: reused when the manifest, its
            sources, `cfg`, `class_names` and this module are those they were computed for (the
            suites read nothing else), so an unchanged dataset skips Great Expectations. Drift and
            the report are always made anew.

    Returns:
        The result: ``success`` is False when a blocking check or a bounded drift statistic failed;
        ``failed_expectations`` names them, ``warnings`` the failed warning checks.
    """
    manifest = pd.read_parquet(manifest_path)
    root = manifest_path.parent
    sources = _read_sources(root)
    key = _suites_key(manifest_path, cfg, class_names)
    memo = read_keyed_json(memo_file, key)
    reused = memo is not None
    outcomes: list[dict[str, Any]] = memo["outcomes"] if memo is not None else run_suites(manifest, cfg, class_names, sources)
    if memo_file is not None and not reused:
        write_json_atomically(memo_file, {"key": key, "outcomes": outcomes})
    if drift is not None:
        outcomes += _drift_outcomes(drift)
    failed = tuple(f"{o['check']}: {o['expectation']}" for o in outcomes if not o["success"] and o["severity"] == "blocking")
    warnings = tuple(f"{o['check']}: {o['expectation']}" for o in outcomes if not o["success"] and o["severity"] == "warning")
    stats = _statistics(manifest, problems or [])
    summary = {
        "success": not failed,
        "verdict": "failed" if failed else "passed with warnings" if warnings else "passed",
        "failed_expectations": list(failed),
        "warnings": list(warnings),
        "statistics": stats,
        "expectations": outcomes,
        "drift": drift.to_dict() if drift is not None else None,
        "drift_note": drift_note,
        "skipped_inputs": list(problems or []),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_JSON).write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / REPORT_HTML).write_text(render_report(summary, manifest, root, cfg, window))
    return ValidationResult(not failed, out_dir / REPORT_HTML, out_dir / REPORT_JSON, failed, stats, warnings, reused)


def _suites_key(manifest_path: Path, cfg: ValidateConfig, class_names: Sequence[str]) -> str:
    """sha256 of what `run_suites` reads: the manifest's and sources.csv's bytes, the params, this code."""
    return content_digest(manifest_path, manifest_path.parent / "sources.csv", cfg.model_dump_json().encode(),
                          json.dumps(list(class_names)).encode(), Path(__file__))


def _statistics(manifest: pd.DataFrame, problems: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    split = manifest["split"].astype("object").fillna("unsplit") if "split" in manifest else pd.Series("unsplit", index=manifest.index)
    by_split = manifest.assign(split=split).groupby(["split", "label"]).size() if "label" in manifest else pd.Series(dtype=int)
    return {
        "rows": len(manifest),
        "patients": int(manifest["patient_id"].nunique()) if "patient_id" in manifest else 0,
        "class_counts": {str(k): int(v) for k, v in manifest["label"].value_counts().items()} if "label" in manifest else {},
        "class_counts_by_split": {s: {str(lab): int(n) for lab, n in g.droplevel(0).items()} for s, g in by_split.groupby(level=0)},
        "skipped_inputs": len(problems),
    }


# ---------------------------------------------------------------------------------------------
# The report.


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
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _pictures(manifest: pd.DataFrame, root: Path, cfg: ValidateConfig, window: tuple[float, float] | None) -> tuple[str, str]:
    """(histogram SVG, thumbnail grid HTML), from up to a few dozen images per class."""
    from matplotlib.figure import Figure

    from components.data.shards import ImageStore
    from components.documents.report import _svg

    per_class = max(cfg.histogram_images_per_class, cfg.thumbnails_per_class)
    samples = _samples(manifest, per_class)
    ct = "modality" in manifest and bool((manifest["modality"] == "CT").all())
    lower = upper = None
    if ct and window is not None:
        lower, upper = window[0] - window[1] / 2, window[0] + window[1] / 2
    pixels: dict[str, np.ndarray] = {}
    grid = []
    with ImageStore(root) as store:
        for label, rows in samples.items():
            values, thumbs = [], []
            for i, rel in enumerate(rows["path"]):
                try:
                    arr = store.load(rel)
                except (OSError, ValueError, KeyError) as exc:  # a report must show what it can
                    thumbs.append(f"<span class=muted>{html.escape(type(exc).__name__)}</span>")
                    continue
                if i < cfg.histogram_images_per_class:
                    values.append(arr.astype(np.float32).ravel()[:: max(1, arr.size // 4096)])
                if len(thumbs) < cfg.thumbnails_per_class:
                    thumbs.append(_thumbnail(_display(arr, lower, upper)))
            pixels[label] = np.concatenate(values) if values else np.zeros(0, np.float32)
            grid.append(f"<h3>{html.escape(label)}</h3><div class=thumbs>{''.join(thumbs)}</div>")
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
    return _svg(fig), "".join(grid)


def render_report(summary: dict[str, Any], manifest: pd.DataFrame, root: Path, cfg: ValidateConfig,
                  window: tuple[float, float] | None = None) -> str:
    """The self-contained HTML page (see the module docstring for its sections)."""
    from components.documents.report import _STYLE, _table

    e = html.escape
    verdict = summary["verdict"]
    stats = summary["statistics"]
    badge = {"failed": "refuse", "passed with warnings": "warn"}.get(verdict, "promote")
    counts = [f"{stats['rows']} images of {stats['patients']} patients",
              f"{len(stats['class_counts'])} classes",
              f"{stats['skipped_inputs']} input(s) skipped at intake"]
    headline = "".join(f"<li>{e(x)}</li>" for x in summary["failed_expectations"]) or "<li>none</li>"
    warn_list = "".join(f"<li>{e(x)}</li>" for x in summary["warnings"]) or "<li>none</li>"

    rows = []
    rank = {"blocking": 0, "warning": 1}  # failures first, blocking before warnings; then the passes
    for o in sorted(summary["expectations"], key=lambda o: (o["success"], rank.get(o["severity"], 2))):
        verdict_cell = "pass" if o["success"] else "FAIL" if o["severity"] == "blocking" else "warn" if o["severity"] == "warning" else "note"
        css = "pass" if o["success"] else "fail" if o["severity"] == "blocking" else "muted"
        files = o["offending"][: cfg.max_listed_files]
        more = len(o["offending"]) - len(files)
        listed = "<br>".join(e(f) for f in files) + (f"<br><i>... and {more} more (report.json lists all)</i>" if more > 0 else "")
        note = e(o.get("detail") or o.get("error") or "")
        rows.append([f"<span class={css}>{verdict_cell}</span>", e(o["check"]), e(o["severity"]),
                     e(CHECKS.get(o["check"], o["check"].replace("_", " "))) + f"<br><code>{e(o['expectation'])}</code>",
                     e(_short(o["observed"])), listed + (f"<br>{note}" if note else "")])
    checks = _table(["verdict", "check", "severity", "what", "observed", "offending files / detail"], rows)

    by_split = stats["class_counts_by_split"]
    labels = sorted(stats["class_counts"])
    balance = _table(["split", *map(e, labels), "total"], [
        [e(s), *[str(by_split[s].get(lab, 0)) for lab in labels], str(sum(by_split[s].values()))]
        for s in sorted(by_split, key=lambda s: (SPLITS + ("unsplit",)).index(s) if s in SPLITS + ("unsplit",) else 9)
    ])
    histogram, thumbnails = _pictures(manifest, root, cfg, window)
    skipped = _table(["file", "reason"], [[e(p.get("file", "")), e(p.get("reason", ""))] for p in summary["skipped_inputs"]]) \
        if summary["skipped_inputs"] else "<p>none</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>medgate data quality: {e(verdict)}</title>
<style>{_STYLE}td{{text-align:left;vertical-align:top}}.warn{{background:#fff4d6;color:#7a5300}}
.thumbs{{display:flex;flex-wrap:wrap;gap:4px}}.thumbs img{{image-rendering:pixelated;border:1px solid #ccc}}</style></head><body>
<h1>Data quality</h1><div class="verdict {badge}">{e(verdict.upper())}</div>
<ul>{''.join(f'<li>{e(c)}</li>' for c in counts)}</ul>
<h2>Blocking failures</h2><ul>{headline}</ul>
<h2>Warnings</h2><ul>{warn_list}</ul>
<h2>Checks</h2>{checks}
<h2>Class balance per split</h2>{balance}
<h2>Intensity histograms per class</h2><figure>{histogram}<figcaption>Stored intensities of up to
{cfg.histogram_images_per_class} images per class.</figcaption></figure>
<h2>Thumbnails per class</h2>{thumbnails}
{_drift_section(summary.get("drift"), summary.get("drift_note", ""))}
<h2>Inputs skipped at intake</h2>{skipped}
</body></html>"""


def _drift_section(drift: dict[str, Any] | None, note: str) -> str:
    from components.documents.report import _table

    e = html.escape
    if not drift:
        return f"<h2>Drift</h2><p class=muted>Not computed: {e(note or 'no baseline given')}.</p>"
    parts = [f"<h2>Drift against {e(drift['baseline'])}</h2>"]
    parts.append(_table(["statistic", "value", "bound", "verdict", "detail"], [
        [e(c["name"]), e(_short(c["value"])), e(_short(c["bound"])),
         "<span class=fail>EXCEEDED</span>" if c["exceeded"] else "reported" if c["bound"] is None else "<span class=pass>within</span>",
         e(c["detail"])] for c in drift["checks"]]))
    for name, rows in drift["tables"].items():
        if rows:
            header = list(rows[0])
            parts.append(f"<h3>{e(name)}</h3>" + _table([e(h) for h in header], [[e(_short(r[h])) for h in header] for r in rows]))
    return "".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value) if value is not None else "-"
    return text if len(text) <= 160 else text[:157] + "..."
