"""validate: Great Expectations suites over the manifest, and the report a person reviews.

Two suites run on an ephemeral GX context: one over the images (the manifest plus derived
columns: how many splits each patient's images fall in, how many splits or patients share each
image's pixels, the intensity bounds of each row's modality) and one over the classes (each class's
count and share). Every expectation belongs to a named check (`CHECKS`); params.yaml's
``validate.severity`` says which checks block the run and which are warnings. Drift against the
production model's training data (components.data.drift) joins the verdict: a drift statistic over
its configured bound blocks too (a warning with ``drift.require_retraining``).

Writes under ``out_dir``: ``report.html``, one self-contained page (components.documents.quality)
that names each check's offending files by their source file names (ingest's sources.csv), and
``report.json``, the same for machines.
"""

from __future__ import annotations

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
from components.documents.quality import render_report

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
    "clip_kind": "clips (video, DICOM cine) and still images are not mixed in one dataset",
    "clip_frames": "each clip's frame count lies within the configured bounds",
    "clip_fps": "each clip's frame rate lies within the configured bounds",
    "clip_duration": "each clip's duration lies within the configured bounds",
    "clip_resolution": "each clip's source frame height and width lie within the configured bounds",
    "black_clips": "no clip is black (its brightest pixel above the configured level)",
    "sample_rate": "recordings' source sample rates lie within the configured range",
    "duration": "recordings' durations lie within the configured range",
    "level": "recordings' peak levels lie within the configured range (not nearly silent)",
    "clipping": "no recording has more than the configured share of clipped samples",
    "silence": "no recording is silent for more than the configured share of its frames",
    "dc_offset": "no recording's mean sample (DC offset) exceeds the configured bound",
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
        images.append(tag("image_kind", gxe.ExpectColumnValuesToBeInSet, column="ndim",
                          value_set=[1] if "sample_rate" in columns else [2, 3]))
    if "sample_rate" in columns:  # recordings: durations and levels instead of image sizes
        images += _audio_expectations(cfg, tag, gxe)
    else:
        images += [tag("image_size", gxe.ExpectColumnValuesToBeBetween, column=c, min_value=cfg.min_size,
                       max_value=cfg.max_size) for c in ("height", "width") if c in columns]
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
    images += _clip_expectations(cfg, columns, tag)
    classes = [tag("class_balance", gxe.ExpectColumnValuesToBeBetween, column="fraction",
                   min_value=cfg.min_class_fraction, max_value=cfg.max_class_fraction)]
    return images, classes


def _clip_expectations(cfg: ValidateConfig, columns: Sequence[str], tag: Any) -> list[Any]:
    """The clip checks, where the manifest has clips (rows without ``frames`` are still images,
    whose null clip values GX skips)."""
    import great_expectations.expectations as gxe

    if "frames" not in columns:
        return []
    clip = cfg.clips

    def between(check: str, column: str, bound: Any) -> Any:
        return tag(check, gxe.ExpectColumnValuesToBeBetween, column=column, min_value=bound.lower, max_value=bound.upper)

    found = [tag("clip_kind", gxe.ExpectColumnUniqueValueCountToBeBetween, column="is_clip", min_value=1, max_value=1),
             between("clip_frames", "frames", clip.frames)]
    found += [between("clip_fps", "fps", clip.fps)] if "fps" in columns else []
    found += [between("clip_duration", "duration_s", clip.duration_s)] if "duration_s" in columns else []
    found += [between("clip_resolution", c, clip.resolution) for c in ("source_height", "source_width") if c in columns]
    found.append(tag("black_clips", gxe.ExpectColumnValuesToBeBetween, column="clip_max", min_value=clip.black_max,
                     strict_min=True))
    return found


def _audio_expectations(cfg: ValidateConfig, tag: Any, gxe: Any) -> list[Any]:
    """The checks of the recording columns (components/readers/audio.py)."""
    a = cfg.audio

    def between(check: str, column: str, lower: float | None, upper: float | None) -> Any:
        return tag(check, gxe.ExpectColumnValuesToBeBetween, column=column, min_value=lower, max_value=upper)

    return [between("sample_rate", "sample_rate", a.sample_rate.lower, a.sample_rate.upper),
            between("duration", "duration_s", a.duration_s.lower, a.duration_s.upper),
            between("level", "peak_dbfs", a.peak_dbfs.lower, a.peak_dbfs.upper),
            between("clipping", "clipped_fraction", None, a.max_clipped_fraction),
            between("silence", "silent_fraction", None, a.max_silent_fraction),
            between("dc_offset", "dc_offset", -a.max_dc_offset, a.max_dc_offset)]


def validation_frames(manifest: pd.DataFrame, cfg: ValidateConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frames the suites run on: the manifest with derived columns, and one row per class.

    Derived columns: ``patient_splits`` (distinct splits among the patient's images),
    ``is_clip`` and ``clip_max`` (the brightest stored pixel of a clip; null for still images),
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
    if "frames" in frame.columns:
        frame["is_clip"] = frame["frames"].notna()
        frame["clip_max"] = frame["intensity_max"].where(frame["is_clip"]) if "intensity_max" in frame.columns else np.nan
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
    from components.data.shards import ImageStore

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
    with ImageStore(root) as store:
        (out_dir / REPORT_HTML).write_text(render_report(summary, manifest, store.load, cfg, CHECKS, window))
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
        # files that may carry burned-in text, taken by ingest.accept_burned_in_risk or ingest.video.mask
        # (components.privacy.burned_in; the refused ones are skipped inputs)
        "burned_in_risk": {str(k): int(v) for k, v in manifest["burned_in_risk"].value_counts().items()}
        if "burned_in_risk" in manifest else {},
    }
