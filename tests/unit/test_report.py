"""The run report: one self-contained page; `medgate report` finds it."""

import json

import pandas as pd
import pytest

from components.report import build_report
from flows.cli_report import find_report


def _page(metrics, gate=None, class_names=("a", "b", "c")):
    predictions = pd.DataFrame({
        "image_id": ["1", "2", "3", "4"], "label": ["a", "b", "c", "c"], "predicted": ["a", "b", "b", "c"],
        "prob_a": [0.8, 0.2, 0.1, 0.1], "prob_b": [0.1, 0.7, 0.6, 0.1], "prob_c": [0.1, 0.1, 0.3, 0.8],
    })
    return build_report({"run_id": "r1", "model_name": "m"}, metrics, predictions, list(class_names), [], {}, None, [], gate)


def test_multiclass_page_with_a_subgroup_that_cannot_be_measured():
    metrics = {"auc": 1.0, "accuracy": 0.75, "subgroups": {"site": {
        "x": {"n": 3, "computable": True, "auc": 1.0, "accuracy": 0.67, "sensitivity": 0.8, "specificity": 0.9, "f1": 0.7},
        "y": {"n": 1, "computable": False, "reason": "one class only in this subgroup"}}}}
    page = _page(metrics)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3  # no training history: no curves
    assert "not computable: one class only in this subgroup" in page
    assert "The gate did not run" in page and "no gate decision" in page
    assert "http" not in page.replace("http://www.w3.org", "")  # nothing fetched from anywhere


def test_gate_checks_are_escaped():
    gate = {"promote": True, "reason": "all 1 checks passed", "checks": [
        {"kind": "value", "metric": "auc<script>", "value": 0.9, "threshold": 0.8, "comparison": ">=", "verdict": "pass", "detail": ""}]}
    page = _page({"auc": 0.9}, gate)
    assert "PROMOTED" in page and "auc&lt;script&gt;" in page and "<script>" not in page


def _run(runs, uid, report=True, status="completed", error=None):
    folder = runs / uid
    folder.mkdir(parents=True)
    summary = {"run_id": uid, "status": status, "error": error}
    if report:
        (folder / "report.html").write_text("<html></html>")
        summary["report"] = str(folder / "report.html")
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_find_report_latest_by_id_and_prefix(tmp_path):
    first = _run(tmp_path, "aaaa-1111")
    second = _run(tmp_path, "bbbb-2222")
    _run(tmp_path, "cccc-3333", report=False, status="failed", error="ValidationFailed: rows")
    assert find_report(tmp_path, None) == second / "report.html"  # latest run that has one
    assert find_report(tmp_path, "aaaa") == first / "report.html"
    with pytest.raises(LookupError, match="no report .*ValidationFailed"):
        find_report(tmp_path, "cccc-3333")
    with pytest.raises(LookupError, match="no run 'zzzz'"):
        find_report(tmp_path, "zzzz")
    _run(tmp_path, "aaaa-9999")
    with pytest.raises(LookupError, match="matches 2 runs"):
        find_report(tmp_path, "aaaa")
