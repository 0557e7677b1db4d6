"""validate: a Great Expectations suite over the manifest, and the report a person reviews.

Writes `report.html` (one self-contained file, no network needed to render it) and
`report.json` (the same for machines) under `out_dir`. Every expectation here is blocking:
a failure stops the flow before anything trains.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from components.artifacts import MANIFEST_COLUMNS, ValidationResult
from components.config import ValidateConfig

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"


def build_expectations(cfg: ValidateConfig) -> list[Any]:
    """The suite's expectations, from the validate section of params."""
    import great_expectations.expectations as gxe

    required = [gxe.ExpectColumnToExist(column=c) for c in MANIFEST_COLUMNS]
    return [
        *required,
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, max_value=cfg.max_rows),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("image_id", "patient_id", "label", "path", "content_hash")],
        gxe.ExpectColumnValuesToBeUnique(column="image_id"),
        gxe.ExpectColumnValuesToBeUnique(column="content_hash"),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=2),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
        gxe.ExpectColumnValuesToBeInSet(column="ndim", value_set=[2, 3]),
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=cfg.min_size, max_value=cfg.max_size) for c in ("height", "width")],
        gxe.ExpectColumnValuesToBeBetween(column="intensity_min", min_value=cfg.intensity_min),
        gxe.ExpectColumnValuesToBeBetween(column="intensity_max", max_value=cfg.intensity_max),
        # A constant image carries no information and usually means a broken export.
        gxe.ExpectColumnValuesToBeBetween(column="intensity_std", min_value=0, strict_min=True),
    ]


def _describe(expectation: dict[str, Any]) -> str:
    kwargs = {k: v for k, v in expectation["kwargs"].items() if k not in ("batch_id",)}
    return f"{expectation['type']}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def run_suite(manifest: pd.DataFrame, cfg: ValidateConfig) -> list[dict[str, Any]]:
    """Run the suite on an ephemeral GX context; one dict per expectation with its outcome."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas("manifest")
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="manifest"))
    for expectation in build_expectations(cfg):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="manifest", data=batch, suite=suite))
    frame = manifest.assign(split=manifest["split"].fillna("train")) if "split" in manifest else manifest
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]} if "path" in frame else "SUMMARY",
    ).to_json_dict()
    outcomes = []
    for r in result["results"]:
        res = r.get("result") or {}
        offending = sorted({str(row.get("path")) for row in (res.get("unexpected_index_list") or []) if isinstance(row, dict)})
        outcomes.append(
            {
                "expectation": _describe(r["expectation_config"]),
                "success": bool(r["success"]),
                "observed": res.get("observed_value", res.get("unexpected_count")),
                "unexpected_count": res.get("unexpected_count"),
                "offending_files": offending[:50],
                "error": (r.get("exception_info") or {}).get("exception_message"),
            }
        )
    return outcomes


def validate_manifest(manifest_path: Path, cfg: ValidateConfig, out_dir: Path, problems: list[dict[str, str]] | None = None) -> ValidationResult:
    """Validate the manifest and write the report; `problems` are inputs ingest had to skip."""
    manifest = pd.read_parquet(manifest_path)
    outcomes = run_suite(manifest, cfg)
    failed = tuple(o["expectation"] for o in outcomes if not o["success"])
    stats = {
        "rows": int(len(manifest)),
        "patients": int(manifest["patient_id"].nunique()) if "patient_id" in manifest else 0,
        "class_counts": {str(k): int(v) for k, v in manifest["label"].value_counts().items()} if "label" in manifest else {},
        "skipped_inputs": len(problems or []),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"success": not failed, "failed_expectations": list(failed), "statistics": stats, "expectations": outcomes, "skipped_inputs": problems or []}
    (out_dir / REPORT_JSON).write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / REPORT_HTML).write_text(render_report(summary, manifest_path))
    return ValidationResult(not failed, out_dir / REPORT_HTML, out_dir / REPORT_JSON, failed, stats)


def render_report(summary: dict[str, Any], manifest_path: Path) -> str:
    """One self-contained HTML page: the verdict first, then each expectation, then skipped inputs."""
    e = html.escape
    verdict = "PASSED" if summary["success"] else "FAILED"
    rows = "".join(
        f"<tr class={'ok' if o['success'] else 'bad'}><td>{'pass' if o['success'] else 'FAIL'}</td><td><code>{e(o['expectation'])}</code></td>"
        f"<td>{e(str(o['observed']))}</td><td>{e(', '.join(o['offending_files']) or '')}{e(o['error'] or '')}</td></tr>"
        for o in summary["expectations"]
    )
    skipped = "".join(f"<tr><td>{e(p.get('file', ''))}</td><td>{e(p.get('reason', ''))}</td></tr>" for p in summary["skipped_inputs"])
    stats = summary["statistics"]
    classes = ", ".join(f"{e(k)}: {v}" for k, v in stats["class_counts"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>medgate data quality: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}h1.PASSED{{color:#1a7f37}}h1.FAILED{{color:#cf222e}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
tr.bad{{background:#ffebe9}}code{{font-size:90%}}</style></head><body>
<h1 class="{verdict}">Data quality: {verdict}</h1>
<p>Manifest <code>{e(str(manifest_path))}</code>: {stats['rows']} images, {stats['patients']} patients; classes {classes};
{stats['skipped_inputs']} input(s) skipped at intake.</p>
<h2>Expectations</h2><table><tr><th>verdict</th><th>expectation</th><th>observed</th><th>offending files</th></tr>{rows}</table>
<h2>Inputs skipped at intake</h2><table><tr><th>file</th><th>reason</th></tr>{skipped or '<tr><td colspan=2>none</td></tr>'}</table>
</body></html>"""
