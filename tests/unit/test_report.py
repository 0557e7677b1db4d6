"""The run report: one self-contained page; `medgate report` finds it."""

import json

import pandas as pd
import pytest

from components.documents.report import RunOutputs, build_report
from cli.report import find_report


def _page(metrics, gate=None, class_names=("a", "b", "c"), history=(), training=None):
    predictions = pd.DataFrame({
        "image_id": ["1", "2", "3", "4"], "label": ["a", "b", "c", "c"], "predicted": ["a", "b", "b", "c"],
        "prob_a": [0.8, 0.2, 0.1, 0.1], "prob_b": [0.1, 0.7, 0.6, 0.1], "prob_c": [0.1, 0.1, 0.3, 0.8],
    })
    outputs = RunOutputs(metrics, predictions, list(class_names), history=list(history), training=training or {}, baseline_predictions=None,
                         calibration_bins=[])
    return build_report({"run_id": "r1", "model_name": "m"}, outputs, gate)


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


def test_an_ensemble_shows_each_member_and_how_it_predicted():
    metrics = {"auc": 0.9, "accuracy": 0.8, "balanced_accuracy": 0.7, "accuracy_uncorrected": 0.6,
               "balanced_accuracy_uncorrected": 0.75,
               "prediction": {"members": 2, "tta_flip_axes": [-1], "prior_correction": True},
               "members": [{"auc": 0.81, "accuracy": 0.71}, {"auc": 0.82, "accuracy": 0.72}]}
    history = [{"epoch": e, "train_loss": 0.5, "val_loss": 0.5, "val_auc": 0.8, "member": m} for m in (0, 1) for e in (1, 2)]
    training = {"ensemble": 2, "epochs_run": 4, "members": [{"best_epoch": 1}, {"best_epoch": 2}], "stopped": "epochs"}
    page = _page(metrics, history=history, training=training)
    assert "4 run by 2 members, epochs 1, 2 selected" in page and page.count("<svg") == 4
    assert all(text in page for text in ("member 0", "member 1", "0.8100", "0.7200", "axes -1", "to the training split"))
    assert "accuracy 0.6000, balanced accuracy 0.7500" in page


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


def test_charts_are_drawn_once_per_set_of_stage_outputs(tmp_path, monkeypatch):
    import components.documents.report as report

    train, evaluate = tmp_path / "train", tmp_path / "evaluate"
    (evaluate / "plots").mkdir(parents=True)
    train.mkdir()
    (train / "model.json").write_text(json.dumps({"class_names": ["normal", "lesion"]}))
    (train / "history.json").write_text(json.dumps([{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "val_auc": 0.8}]))
    (train / "training.json").write_text(json.dumps({"best_epoch": 1}))
    (evaluate / "metrics.json").write_text(json.dumps({"auc": 1.0}))
    (evaluate / "plots" / "calibration.json").write_text("[]")
    predictions = pd.DataFrame({"image_id": ["1", "2", "3"], "label": ["normal", "lesion", "lesion"],
                                "predicted": ["normal", "lesion", "normal"], "prob_normal": [0.9, 0.2, 0.6], "prob_lesion": [0.1, 0.8, 0.4]})
    predictions.to_csv(evaluate / "predictions.csv", index=False)
    memo = tmp_path / "state" / "charts.json"

    first = report.write_report(tmp_path / "r1.html", {"run_id": "r1"}, evaluate, train, None, None, memo).read_text()
    assert first.count("<svg") == 4 and memo.is_file()
    monkeypatch.setattr(report, "draw_charts", lambda *a, **k: pytest.fail("charts drawn again for the same outputs"))
    second = report.write_report(tmp_path / "r2.html", {"run_id": "r2"}, evaluate, train, None, None, memo).read_text()
    assert second == first.replace("run r1", "run r2"), "the same page but for this run's summary"
    # A changed stage output (another prediction) is drawn anew.
    predictions.assign(predicted=["normal", "lesion", "lesion"]).to_csv(evaluate / "predictions.csv", index=False)
    with pytest.raises(pytest.fail.Exception, match="drawn again"):
        report.write_report(tmp_path / "r3.html", {"run_id": "r3"}, evaluate, train, None, None, memo)
