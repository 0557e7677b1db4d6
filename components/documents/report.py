"""report: one self-contained HTML page per run, the evidence behind the gate's decision.

Charts are inline SVG drawn by matplotlib (no pyplot, so no global state), tables plain HTML
with a small inline style sheet: the file opens offline, attached to a ticket or an e-mail.
Sections: headline metrics with 95% intervals beside the classical baseline, the gate checks,
ROC curves (network and baseline), confusion matrix, calibration, training curves, subgroups,
and the training run's figures.

Reads the stage outputs (train, baseline, evaluate folders); the caller passes the run's
summary (dataset, validation, model) and the gate decision as plain dicts. The charts depend on the
stage outputs only: with a memo file they are drawn once per set of outputs, and a run that reused
every stage (an unchanged re-run) writes its report without starting matplotlib.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from components.data.artifacts import (
    HISTORY_FILE, METRICS_FILE, PLOTS_DIR, PREDICTIONS_FILE, SPEC_FILE, TRAINING_FILE, content_digest, read_keyed_json,
    write_json_atomically,
)

if TYPE_CHECKING:  # matplotlib and scikit-learn are imported where a chart is drawn (about 1.2 s)
    from matplotlib.figure import Figure

REPORT_FILE = "report.html"
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.pass{color:#17692b;font-weight:600}
.fail{color:#b00020;font-weight:600}.skipped,.muted{color:#777}.verdict{font-size:1.3rem;padding:.5rem 1rem;display:inline-block;border-radius:4px}
.promote{background:#e3f4e6;color:#17692b}.refuse{background:#fbe4e7;color:#b00020}.charts{display:flex;flex-wrap:wrap;gap:1rem}
.charts figure{margin:0}figcaption{font-size:.85rem;color:#555;max-width:480px}
"""
_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "f1", "balanced_accuracy", "ece")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _svg(fig: Figure) -> str:
    """The figure as an inline <svg> element (fixed hash salt: the same data gives the same bytes)."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.hashsalt": "medgate", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def roc_chart(labels: np.ndarray, probs: np.ndarray, class_names: list[str], baseline_probs: np.ndarray | None) -> str:
    """ROC of the positive class (two classes) or each class one-vs-rest, with the baseline dashed."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve


    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot()
    positives = [1] if len(class_names) == 2 else list(range(len(class_names)))
    for k in positives:
        truth = (labels == k).astype(int)
        if truth.min() == truth.max():
            continue
        for source, style, name in ((probs, "-", "network"), (baseline_probs, "--", "baseline")):
            if source is None:
                continue
            fpr, tpr, _ = roc_curve(truth, source[:, k])
            label = name if len(positives) == 1 else f"{name}: {class_names[k]}"
            ax.plot(fpr, tpr, style, label=label, linewidth=1.6 if name == "network" else 1.1)
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _svg(fig)


def confusion_chart(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> str:
    from matplotlib.figure import Figure

    n = len(class_names)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    fig = Figure(figsize=(1.6 + 0.8 * n, 1.4 + 0.8 * n))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=30 if n > 3 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="actual")
    return _svg(fig)


def calibration_chart(bins: list[dict[str, float]]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8, label="perfect calibration")
    if bins:
        conf = [b["confidence"] for b in bins]
        ax.plot(conf, [b["accuracy"] for b in bins], "o-", label="network")
        for b in bins:
            ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7, textcoords="offset points", xytext=(3, -10))
    ax.set(xlabel="confidence of the predicted class", ylabel="observed accuracy", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    return _svg(fig)


def training_chart(history: list[dict[str, float]], best_epoch: int | None) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.4, 3.6))
    loss_ax, auc_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss", markersize=3)
    loss_ax.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss", markersize=3)
    auc_ax.plot(epochs, [h["val_auc"] for h in history], "o-", color="tab:green", label="validation AUC", markersize=3)
    for ax in (loss_ax, auc_ax):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"selected epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    loss_ax.set_ylabel("cross-entropy")
    auc_ax.set_ylabel("AUC")
    return _svg(fig)


def _metrics_section(metrics: dict[str, Any]) -> str:
    has_baseline = "baseline_auc" in metrics
    rows = []
    for name in _METRICS:
        lower, upper = metrics.get(f"{name}_ci_lower"), metrics.get(f"{name}_ci_upper")
        ci = f"{_fmt(lower)} - {_fmt(upper)}" if lower is not None else ""
        row = [name, _fmt(metrics.get(name)), ci]
        if has_baseline:
            base = metrics.get(f"baseline_{name}")
            diff = metrics[name] - base if isinstance(base, (int, float)) and isinstance(metrics.get(name), (int, float)) else None
            row += [_fmt(base), _fmt(diff)]
        rows.append(row)
    header = ["metric (test split)", "network", "95% interval"] + (["baseline", "network - baseline"] if has_baseline else [])
    point = metrics.get("operating_point", "youden")
    notes = [
        (f"{metrics.get('n_test', '?')} test images; operating threshold {_fmt(metrics.get('operating_threshold'))} "
        f"on p(positive), chosen on the validation split ({html.escape(str(point))})."),
        "Intervals: percentile bootstrap over test images.",
    ]
    if has_baseline:
        notes.append(
            f"Baseline: {html.escape(str(metrics.get('baseline_classifier')))} on radiomics-style features; "
            f"AUC difference 95% interval (paired bootstrap) {_fmt(metrics.get('auc_minus_baseline_ci_lower'))} - "
            f"{_fmt(metrics.get('auc_minus_baseline_ci_upper'))}."
        )
    return "<h2>Test metrics</h2>" + _table(header, rows) + "".join(f"<p class=muted>{n}</p>" for n in notes)


def _gate_section(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "<h2>Gate</h2><p class=muted>The gate did not run for this run.</p>"
    rows = [
        [html.escape(c["kind"]), html.escape(c["metric"]), _fmt(c.get("value")), html.escape(c["comparison"]), _fmt(c.get("threshold")),
         f"<span class={html.escape(c['verdict'])}>{html.escape(c['verdict'])}</span>", html.escape(c.get("detail", ""))]
        for c in gate.get("checks", [])
    ]
    table = _table(["check", "metric", "value", "comparison", "threshold", "verdict", "detail"], rows) if rows else ""
    note = f"<p class=muted>{html.escape(gate['champion_note'])}</p>" if gate.get("champion_note") else ""
    return f"<h2>Gate</h2><p>{html.escape(gate.get('reason', ''))}</p>{note}{table}"


def _subgroup_section(subgroups: dict[str, Any]) -> str:
    if not subgroups:
        return "<h2>Subgroups</h2><p class=muted>The data has no subgroup columns (site, sex, age band, scanner).</p>"
    rows = []
    for column, groups in subgroups.items():
        for group, values in groups.items():
            if values.get("computable"):
                rows.append([html.escape(column), html.escape(str(group)), str(values["n"]), *[_fmt(values.get(m)) for m in _METRICS[:5]], ""])
            else:
                rows.append([html.escape(column), html.escape(str(group)), str(values["n"]), *["-"] * 5, f"<span class=muted>not computable: {html.escape(values.get('reason', ''))}</span>"])
    return "<h2>Subgroups</h2>" + _table(["column", "group", "n", *_METRICS[:5], "note"], rows)


def _training_section(training: dict[str, Any], history: list[dict[str, float]], chart_svg: str) -> str:
    if not history:
        return ""
    facts = [
        ["network", f"{html.escape(str(training.get('family')))} ({training.get('parameters', 0):,} parameters)"],
        ["epochs", f"{training.get('epochs_run')} run, epoch {training.get('best_epoch')} selected (validation AUC {_fmt(training.get('best_val_auc'))}); stopped by {html.escape(str(training.get('stopped')))}"],
        ["training time", f"{_fmt(training.get('train_seconds'), 1)} s on {html.escape(str(training.get('device')))} ({training.get('threads')} threads), {_fmt(training.get('images_per_second'), 0)} images/s, {_fmt(100 * training.get('data_fraction', 0), 1)}% of it preparing batches"],
    ]
    if training.get("resumed_after_epoch"):
        facts.append(["resumed", f"after epoch {training['resumed_after_epoch']} from a checkpoint"])
    chart = _figure(chart_svg, "Training curves; the dotted line marks the epoch kept (best validation AUC).")
    return "<h2>Training</h2>" + _table(["", ""], facts) + f"<div class=charts>{chart}</div>"


def build_report(
    summary: dict[str, Any],
    metrics: dict[str, Any],
    predictions: pd.DataFrame,
    class_names: list[str],
    history: list[dict[str, float]],
    training: dict[str, Any],
    baseline_predictions: pd.DataFrame | None,
    calibration_bins: list[dict[str, float]],
    gate: dict[str, Any] | None,
    charts: dict[str, str] | None = None,
) -> str:
    """The report page as a string; every input is already loaded (see write_report). `charts`:
    the SVGs of `draw_charts` for these inputs, drawn here when not given."""
    if charts is None:
        charts = draw_charts(predictions, class_names, history, training, baseline_predictions, calibration_bins)
    has_baseline = baseline_predictions is not None

    title = f"medgate run {summary.get('run_id', '')}: {summary.get('model_name', '')}"
    if gate is None:
        verdict = "<span class='verdict refuse'>no gate decision</span>"
    elif gate.get("promote"):
        verdict = "<span class='verdict promote'>PROMOTED</span>"
    else:
        verdict = "<span class='verdict refuse'>REFUSED</span>"
    dataset = summary.get("dataset", {})
    validation = summary.get("validation", {})
    facts = [
        ["dataset", f"{html.escape(str(dataset.get('source', '-')))} (version {html.escape(str(dataset.get('version', '-')))}), {dataset.get('images', '-')} images of {dataset.get('patients', '-')} patients"],
        ["data quality", f"{'passed' if validation.get('success') else 'failed'}; report {html.escape(str(validation.get('report', '-')))}"],
        ["model", f"{html.escape(str(summary.get('model_name', '-')))} version {summary.get('model_version', '-')}, bento {html.escape(str(summary.get('bento_tag') or '-'))}"],
        ["classes", ", ".join(html.escape(c) for c in class_names) + (f" (positive: {html.escape(class_names[1])})" if len(class_names) == 2 else "")],
    ]
    calibration_note = f"ECE {_fmt(metrics.get('ece'))} as served"
    if "temperature" in metrics:
        calibration_note += f"; with temperature scaling fitted on validation (T = {_fmt(metrics['temperature'], 3)}) ECE would be {_fmt(metrics.get('ece_scaled'))}, NLL {_fmt(metrics.get('nll'))} → {_fmt(metrics.get('nll_scaled'))}"
    figures = "".join(
        [
            _figure(charts["roc"], f"ROC on the test split: network AUC {_fmt(metrics.get('auc'))}" + (f", baseline (dashed) {_fmt(metrics.get('baseline_auc'))}" if has_baseline else "") + "."),
            _figure(charts["confusion"], "Confusion matrix at the operating threshold."),
            _figure(charts["calibration"], f"Reliability: accuracy against confidence per bin (numbers: images). {calibration_note}."),
        ]
    )
    body = (
        f"<h1>{html.escape(title)}</h1>{verdict}"
        + _table(["", ""], facts)
        + _metrics_section(metrics)
        + _gate_section(gate)
        + f"<h2>Curves</h2><div class=charts>{figures}</div>"
        + _subgroup_section(metrics.get("subgroups") or {})
        + _training_section(training, history, charts.get("training", ""))
    )
    return f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"


def draw_charts(
    predictions: pd.DataFrame,
    class_names: list[str],
    history: list[dict[str, float]],
    training: dict[str, Any],
    baseline_predictions: pd.DataFrame | None,
    calibration_bins: list[dict[str, float]],
) -> dict[str, str]:
    """The report's charts as inline SVG: roc, confusion, calibration and (with a history) training."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = predictions["label"].astype(str).map(index).to_numpy()
    predicted = predictions["predicted"].astype(str).map(index).to_numpy()
    prob_columns = [f"prob_{name}" for name in class_names]
    probs = predictions[prob_columns].to_numpy(dtype=float)
    base_probs = None
    if baseline_predictions is not None:
        base_probs = baseline_predictions.set_index("image_id").loc[predictions["image_id"], prob_columns].to_numpy(dtype=float)
    charts = {
        "roc": roc_chart(labels, probs, class_names, base_probs),
        "confusion": confusion_chart(labels, predicted, class_names),
        "calibration": calibration_chart(calibration_bins),
    }
    if history:
        charts["training"] = training_chart(history, training.get("best_epoch"))
    return charts


def write_report(
    out_path: Path,
    summary: dict[str, Any],
    evaluate_dir: Path,
    train_dir: Path,
    baseline_dir: Path | None,
    gate: dict[str, Any] | None,
    memo_file: Path | None = None,
) -> Path:
    """Write the run's report from the stage outputs and the gate decision; returns its path.

    `memo_file`: where the charts of the last report are kept, with the hash of the stage output
    files they were drawn from; reused when those files are unchanged.
    """
    baseline_file = baseline_dir / PREDICTIONS_FILE if baseline_dir is not None else None
    inputs = [train_dir / SPEC_FILE, train_dir / HISTORY_FILE, train_dir / TRAINING_FILE, evaluate_dir / PREDICTIONS_FILE,
              evaluate_dir / PLOTS_DIR / "calibration.json", *([baseline_file] if baseline_file else [])]
    key = content_digest(Path(__file__), *inputs)
    memo = read_keyed_json(memo_file, key)
    class_names = [str(c) for c in json.loads((train_dir / SPEC_FILE).read_text())["class_names"]]
    predictions = pd.read_csv(evaluate_dir / PREDICTIONS_FILE, dtype={"image_id": str, "label": str, "predicted": str})
    history = json.loads((train_dir / HISTORY_FILE).read_text()) if (train_dir / HISTORY_FILE).exists() else []
    training = json.loads((train_dir / TRAINING_FILE).read_text()) if (train_dir / TRAINING_FILE).exists() else {}
    baseline = pd.read_csv(baseline_file, dtype={"image_id": str}) if baseline_file and baseline_file.exists() else None
    calibration_bins = json.loads((evaluate_dir / PLOTS_DIR / "calibration.json").read_text())
    charts = memo["charts"] if memo is not None else draw_charts(predictions, class_names, history, training, baseline, calibration_bins)
    if memo_file is not None and memo is None:
        write_json_atomically(memo_file, {"key": key, "charts": charts})
    page = build_report(
        summary=summary,
        metrics=json.loads((evaluate_dir / METRICS_FILE).read_text()),
        predictions=predictions,
        class_names=class_names,
        history=history,
        training=training,
        baseline_predictions=baseline,
        calibration_bins=calibration_bins,
        gate=gate,
        charts=charts,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path
