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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.artifacts import (
    HISTORY_FILE, METRICS_FILE, PLOTS_DIR, PREDICTIONS_FILE, SPEC_FILE, TRAINING_FILE, content_digest, read_keyed_json,
    write_json_atomically,
)
from components.documents import html as page_html
from components.documents.html import STYLE, escape, figure, fmt, svg, table

REPORT_FILE = "report.html"
_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "f1", "balanced_accuracy", "ece")


@dataclass(frozen=True)
class RunOutputs:
    """What the report shows of a run's stage outputs, loaded once."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame  # image_id, label, predicted, prob_<class> per test image
    class_names: list[str]
    history: list[dict[str, float]]  # per epoch; [] when the training stage kept none
    training: dict[str, Any]
    baseline_predictions: pd.DataFrame | None
    calibration_bins: list[dict[str, float]]

    @classmethod
    def load(cls, evaluate_dir: Path, train_dir: Path, baseline_file: Path | None) -> RunOutputs:
        """Read the outputs of the evaluate and train stages (and the baseline's predictions, if any)."""
        def optional_json(path: Path, empty: Any) -> Any:
            return json.loads(path.read_text()) if path.exists() else empty

        return cls(
            metrics=json.loads((evaluate_dir / METRICS_FILE).read_text()),
            predictions=pd.read_csv(evaluate_dir / PREDICTIONS_FILE, dtype={"image_id": str, "label": str, "predicted": str}),
            class_names=[str(c) for c in json.loads((train_dir / SPEC_FILE).read_text())["class_names"]],
            history=optional_json(train_dir / HISTORY_FILE, []),
            training=optional_json(train_dir / TRAINING_FILE, {}),
            baseline_predictions=(pd.read_csv(baseline_file, dtype={"image_id": str})
                                  if baseline_file is not None and baseline_file.exists() else None),
            calibration_bins=json.loads((evaluate_dir / PLOTS_DIR / "calibration.json").read_text()),
        )


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
    return svg(fig)


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
    return svg(fig)


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
    return svg(fig)


def training_chart(history: list[dict[str, float]], best_epoch: int | None) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.4, 3.6))
    loss_ax, auc_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    members = sorted({int(h.get("member", 0)) for h in history})  # an ensemble's history: each member's epochs
    for member in members:
        runs = [h for h in history if int(h.get("member", 0)) == member]
        name = f" (member {member})" if len(members) > 1 else ""
        epochs = [h["epoch"] for h in runs]
        loss_ax.plot(epochs, [h["train_loss"] for h in runs], "o-", label="train loss" + name, markersize=3)
        loss_ax.plot(epochs, [h["val_loss"] for h in runs], "o-", label="validation loss" + name, markersize=3)
        auc_ax.plot(epochs, [h["val_auc"] for h in runs], "o-", label="validation AUC" + name, markersize=3)
    for ax in (loss_ax, auc_ax):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"selected epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    loss_ax.set_ylabel("cross-entropy")
    auc_ax.set_ylabel("AUC")
    return svg(fig)


def _metrics_section(metrics: dict[str, Any]) -> str:
    has_baseline = "baseline_auc" in metrics
    rows = []
    for name in _METRICS:
        lower, upper = metrics.get(f"{name}_ci_lower"), metrics.get(f"{name}_ci_upper")
        ci = f"{fmt(lower)} - {fmt(upper)}" if lower is not None else ""
        row = [name, fmt(metrics.get(name)), ci]
        if has_baseline:
            base = metrics.get(f"baseline_{name}")
            diff = metrics[name] - base if isinstance(base, (int, float)) and isinstance(metrics.get(name), (int, float)) else None
            row += [fmt(base), fmt(diff)]
        rows.append(row)
    header = ["metric (test split)", "network", "95% interval"] + (["baseline", "network - baseline"] if has_baseline else [])
    point = metrics.get("operating_point", "youden")
    notes = [
        (f"{metrics.get('n_test', '?')} test images; operating threshold {fmt(metrics.get('operating_threshold'))} "
        f"on p(positive), chosen on the validation split ({escape(point)})."),
        "Intervals: percentile bootstrap over test images.",
    ]
    if has_baseline:
        notes.append(
            f"Baseline: {escape(metrics.get('baseline_classifier'))} on radiomics-style features; "
            f"AUC difference 95% interval (paired bootstrap) {fmt(metrics.get('auc_minus_baseline_ci_lower'))} - "
            f"{fmt(metrics.get('auc_minus_baseline_ci_upper'))}."
        )
    return "<h2>Test metrics</h2>" + table(header, rows) + "".join(f"<p class=muted>{n}</p>" for n in notes)


def _prediction_section(metrics: dict[str, Any]) -> str:
    """How the probabilities were made (ensemble, test-time flips, prior correction) and each member's metrics."""
    prediction = metrics.get("prediction")
    if not prediction:
        return ""
    flips = prediction.get("tta_flip_axes") or []
    facts = [
        ["networks", f"{prediction.get('members', 1)} (probabilities averaged)" if prediction.get("members", 1) > 1 else "1"],
        ["test-time flips", f"axes {', '.join(str(a) for a in flips)}" if flips else "none"],
        ["prior correction", "to the training split's class prior" if prediction.get("prior_correction") else "off"],
    ]
    if prediction.get("temperature", 1.0) != 1.0:
        facts.append(["temperature", f"{fmt(prediction['temperature'], 3)} (fitted on validation, before the prior correction)"])
    if "accuracy_uncorrected" in metrics:
        facts.append(["without prior correction", f"accuracy {fmt(metrics['accuracy_uncorrected'])}, balanced accuracy "
                      f"{fmt(metrics.get('balanced_accuracy_uncorrected'))} (corrected: {fmt(metrics.get('accuracy'))}, "
                      f"{fmt(metrics.get('balanced_accuracy'))})"])
    members = metrics.get("members") or []
    shown = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")
    rows = [[f"member {i}", *[fmt(m.get(k)) for k in shown]] for i, m in enumerate(members)]
    if rows:
        rows.append(["ensemble", *[fmt(metrics.get(k)) for k in shown]])
    return ("<h2>Prediction</h2>" + table(["", ""], facts) + (table(["network", *shown], rows) if rows else ""))


def _gate_section(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "<h2>Gate</h2><p class=muted>The gate did not run for this run.</p>"
    rows = [
        [escape(c["kind"]), escape(c["metric"]), fmt(c.get("value")), escape(c["comparison"]), fmt(c.get("threshold")),
         f"<span class={escape(c['verdict'])}>{escape(c['verdict'])}</span>", escape(c.get("detail", ""))]
        for c in gate.get("checks", [])
    ]
    checks = table(["check", "metric", "value", "comparison", "threshold", "verdict", "detail"], rows) if rows else ""
    note = f"<p class=muted>{escape(gate['champion_note'])}</p>" if gate.get("champion_note") else ""
    return f"<h2>Gate</h2><p>{escape(gate.get('reason', ''))}</p>{note}{checks}"


def _subgroup_section(subgroups: dict[str, Any]) -> str:
    if not subgroups:
        return "<h2>Subgroups</h2><p class=muted>The data has no subgroup columns (site, sex, age band, scanner).</p>"
    rows = []
    for column, groups in subgroups.items():
        for group, values in groups.items():
            if values.get("computable"):
                rows.append([escape(column), escape(group), str(values["n"]), *[fmt(values.get(m)) for m in _METRICS[:5]], ""])
            else:
                rows.append([escape(column), escape(group), str(values["n"]), *["-"] * 5, f"<span class=muted>not computable: {escape(values.get('reason', ''))}</span>"])
    return "<h2>Subgroups</h2>" + table(["column", "group", "n", *_METRICS[:5], "note"], rows)


def _training_section(training: dict[str, Any], history: list[dict[str, float]], chart_svg: str) -> str:
    if not history:
        return ""
    if training.get("ensemble"):
        selected = ", ".join(str(m.get("best_epoch")) for m in training.get("members", []))
        epochs = f"{training.get('epochs_run')} run by {training['ensemble']} members, epochs {selected} selected (ensemble validation AUC {fmt(training.get('best_val_auc'))})"
    else:
        epochs = f"{training.get('epochs_run')} run, epoch {training.get('best_epoch')} selected (validation AUC {fmt(training.get('best_val_auc'))})"
    facts = [
        ["network", f"{escape(training.get('family'))} ({training.get('parameters', 0):,} parameters)"],
        ["epochs", f"{epochs}; stopped by {escape(training.get('stopped'))}"],
        ["training time", f"{fmt(training.get('train_seconds'), 1)} s on {escape(training.get('device'))} ({training.get('threads')} threads), {fmt(training.get('images_per_second'), 0)} images/s, {fmt(100 * training.get('data_fraction', 0), 1)}% of it waiting for batches"],
    ]
    if training.get("resumed_after_epoch"):
        facts.append(["resumed", f"after epoch {training['resumed_after_epoch']} from a checkpoint"])
    chart = figure(chart_svg, "Training curves; the dotted line marks the epoch kept (best validation AUC).")
    return "<h2>Training</h2>" + table(["", ""], facts) + f"<div class=charts>{chart}</div>"


def build_report(
    summary: dict[str, Any],
    outputs: RunOutputs,
    gate: dict[str, Any] | None,
    charts: dict[str, str] | None = None,
) -> str:
    """The report page as a string; every input is already loaded (see write_report). `charts`:
    the SVGs of `draw_charts` for these outputs, drawn here when not given."""
    if charts is None:
        charts = draw_charts(outputs)
    metrics, class_names = outputs.metrics, outputs.class_names
    has_baseline = outputs.baseline_predictions is not None

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
        ["dataset", f"{escape(dataset.get('source', '-'))} (version {escape(dataset.get('version', '-'))}), {dataset.get('images', '-')} images of {dataset.get('patients', '-')} patients"],
        ["data quality", f"{'passed' if validation.get('success') else 'failed'}; report {escape(validation.get('report', '-'))}"],
        ["model", f"{escape(summary.get('model_name', '-'))} version {summary.get('model_version', '-')}, bento {escape(summary.get('bento_tag') or '-')}"],
        ["classes", ", ".join(escape(c) for c in class_names) + (f" (positive: {escape(class_names[1])})" if len(class_names) == 2 else "")],
    ]
    calibration_note = f"ECE {fmt(metrics.get('ece'))} as served"
    if "temperature" in metrics:
        calibration_note += f"; with temperature scaling fitted on validation (T = {fmt(metrics['temperature'], 3)}) ECE would be {fmt(metrics.get('ece_scaled'))}, NLL {fmt(metrics.get('nll'))} → {fmt(metrics.get('nll_scaled'))}"
    figures = "".join(
        [
            figure(charts["roc"], f"ROC on the test split: network AUC {fmt(metrics.get('auc'))}" + (f", baseline (dashed) {fmt(metrics.get('baseline_auc'))}" if has_baseline else "") + "."),
            figure(charts["confusion"], "Confusion matrix at the operating threshold."),
            figure(charts["calibration"], f"Reliability: accuracy against confidence per bin (numbers: images). {calibration_note}."),
        ]
    )
    body = (
        f"<h1>{escape(title)}</h1>{verdict}"
        + table(["", ""], facts)
        + _metrics_section(metrics)
        + _prediction_section(metrics)
        + _gate_section(gate)
        + f"<h2>Curves</h2><div class=charts>{figures}</div>"
        + _subgroup_section(metrics.get("subgroups") or {})
        + _training_section(outputs.training, outputs.history, charts.get("training", ""))
    )
    return f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"


def draw_charts(outputs: RunOutputs) -> dict[str, str]:
    """The report's charts as inline SVG: roc, confusion, calibration and (with a history) training."""
    predictions, class_names, baseline_predictions = outputs.predictions, outputs.class_names, outputs.baseline_predictions
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
        "calibration": calibration_chart(outputs.calibration_bins),
    }
    if outputs.history:
        charts["training"] = training_chart(outputs.history, outputs.training.get("best_epoch"))
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
    key = content_digest(Path(__file__), Path(page_html.__file__), *inputs)  # the charts' code and their data
    memo = read_keyed_json(memo_file, key)
    outputs = RunOutputs.load(evaluate_dir, train_dir, baseline_file)
    charts = memo["charts"] if memo is not None else draw_charts(outputs)
    if memo_file is not None and memo is None:
        write_json_atomically(memo_file, {"key": key, "charts": charts})
    page = build_report(summary, outputs, gate, charts)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path
