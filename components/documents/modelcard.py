"""modelcard: one model card per model version, as Markdown and as a self-contained HTML page.

A pure function of the facts it is given (`CardFacts`): it reads no files, registry or config.
The card says what the model is for and not for (`params.yaml` `modelcard`), which data trained
and tested it and that data's quality verdict, its test metrics with bootstrap confidence
intervals, its subgroup metrics, the gate's decision with every check, and its lineage (run,
git commit, params hash, dataset, model and Bento tags). Both formats are rendered from one
list of blocks, so they cannot say different things. The HTML loads nothing from the network.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from components.config import ModelCardText

MARKDOWN_FILE = "model_card.md"
HTML_FILE = "model_card.html"

# Shown first, in this order; any other numeric metric follows alphabetically.
_MAIN_METRICS = ("auc", "sensitivity", "specificity", "accuracy", "balanced_accuracy", "f1", "ece", "val_auc")
_SUBGROUP_METRICS = ("auc", "sensitivity", "specificity", "accuracy")
_CI_SUFFIXES = ("_ci_lower", "_ci_upper")
_LINEAGE_LABELS = {
    "run_id": "run",
    "git_commit": "git commit",
    "params_hash": "params hash (sha256 of the run's params)",
    "prefect_flow_run_id": "Prefect flow run",
    "dataset_version": "dataset version (DVC hash)",
    "test_data_version": "test data version (DVC hash of the prepared splits)",
    "model_tag": "BentoML model",
    "bento_tag": "Bento",
    "artifact_sha256": "model.pt sha256",
}


@dataclass(frozen=True)
class CardFacts:
    """Everything a card shows. Mappings are plain JSON-like data, as the registry stores them.

    Args:
        model_name, model_version, stage: the registry's name, version number and stage.
        use: intended use and limits (params.yaml `modelcard`).
        dataset: `source`, `version`, `kind`, `num_images`, `num_patients`, `class_names`,
            `validation_success`, `report_path` (missing keys are shown as unknown).
        metrics: the test metrics as `components.stages.evaluate` writes them (flat numbers,
            `<metric>_ci_lower/upper`, `operating_threshold`, `n_test`, `subgroups`).
        gate: `GateDecision.to_dict()` (plus `champion_reevaluated`/`champion_note` when known),
            or None when no decision was recorded.
        lineage: keys of `_LINEAGE_LABELS`; None values are shown as not recorded.
        generated_at: an ISO timestamp (passed in: the function stays pure).
        params: the params sections that made the model (e.g. prepare, train, evaluate), nested dicts.
        history: the version's audit rows, oldest first (`at`, `actor`, `action`, `from_stage`,
            `to_stage`, `reason`): how it reached its stage, overrides and rollbacks included.
        notes: extra paragraphs shown under the title.
    """

    model_name: str
    model_version: int
    stage: str
    use: ModelCardText
    dataset: Mapping[str, Any]
    metrics: Mapping[str, Any]
    gate: Mapping[str, Any] | None
    lineage: Mapping[str, Any]
    generated_at: str
    params: Mapping[str, Any] | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenderedCard:
    markdown: str
    html: str

    def files(self) -> dict[str, str]:
        """File name -> text, for writing next to a run or into the model store."""
        return {MARKDOWN_FILE: self.markdown, HTML_FILE: self.html}


# Blocks both renderers understand: a heading, a paragraph, a bullet list, a table.
@dataclass(frozen=True)
class _Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class _Para:
    text: str
    tone: str = ""  # "pass" | "fail" colours the HTML


@dataclass(frozen=True)
class _List:
    items: tuple[str, ...]


@dataclass(frozen=True)
class _Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


_Block = Union[_Heading, _Para, _List, _Table]


def render_model_card(facts: CardFacts) -> RenderedCard:
    """The card of one model version in Markdown and in self-contained HTML."""
    blocks = _blocks(facts)
    title = f"Model card: {facts.model_name} v{facts.model_version}"
    return RenderedCard(markdown=_to_markdown(title, blocks), html=_to_html(title, blocks))


def fmt(value: Any) -> str:
    """A value as the card shows it: 4 decimals for floats, `n/a` for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _blocks(f: CardFacts) -> list[_Block]:
    blocks: list[_Block] = [
        _Para(f"Stage: **{f.stage}**. Generated {f.generated_at}."),
        *(_Para(note) for note in f.notes),
        _Heading("Intended use"),
        _Para(f.use.intended_use),
        _Para(f"Intended users: {f.use.intended_users}"),
    ]
    if f.use.out_of_scope:
        blocks += [_Heading("Out of scope", 3), _List(tuple(f.use.out_of_scope))]
    if f.use.limitations:
        blocks += [_Heading("Limitations", 3), _List(tuple(f.use.limitations))]
    blocks += _data_blocks(f.dataset, f.lineage.get("test_data_version"))
    blocks += _metric_blocks(f.metrics)
    blocks += _gate_blocks(f.gate)
    blocks += _history_blocks(f.history)
    blocks += [
        _Heading("Lineage"),
        _Table(("what", "value"), tuple((label, fmt(f.lineage.get(key))) for key, label in _LINEAGE_LABELS.items())),
    ]
    if f.params:
        rows = tuple((key, value if isinstance(value, str) else json.dumps(value)) for key, value in _flatten(f.params))
        blocks += [_Heading("Parameters", 3), _Table(("param", "value"), rows)]
    return blocks


def _history_blocks(history: Sequence[Mapping[str, Any]]) -> list[_Block]:
    blocks: list[_Block] = [_Heading("Stage history (audit log)")]
    if not history:
        return [*blocks, _Para("No stage change was recorded for this version.")]
    rows = tuple(
        (
            fmt(h.get("at")),
            fmt(h.get("actor")),
            fmt(h.get("action")),
            f"{h.get('from_stage') or '-'} -> {h.get('to_stage') or '-'}",
            fmt(h.get("reason")),
        )
        for h in history
    )
    return [*blocks, _Table(("at (UTC)", "who", "action", "stage", "why"), rows)]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested params as dotted keys, lists joined: `train.model.family`, `train.augment.flip_axes`."""
    flat: list[tuple[str, Any]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat += _flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            flat.append((name, ", ".join(map(str, value))))
        else:
            flat.append((name, value))
    return flat


def _data_blocks(dataset: Mapping[str, Any], test_data_version: Any) -> list[_Block]:
    verdict = dataset.get("validation_success")
    quality = "unknown" if verdict is None else "passed" if verdict else "FAILED"
    rows = (
        ("source", fmt(dataset.get("source"))),
        ("version (DVC hash)", fmt(dataset.get("version"))),
        ("kind", fmt(dataset.get("kind"))),
        ("images", fmt(dataset.get("num_images"))),
        ("patients", fmt(dataset.get("num_patients"))),
        ("classes", ", ".join(map(str, dataset.get("class_names") or ())) or "n/a"),
        ("test data version", fmt(test_data_version)),
        ("data quality (Great Expectations)", quality),
        ("quality report", fmt(dataset.get("report_path"))),
    )
    tone = "" if verdict is None else "pass" if verdict else "fail"
    return [_Heading("Training data"), _Table(("what", "value"), rows), _Para(f"Data quality: {quality}.", tone)]


def _metric_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    numeric = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith(_CI_SUFFIXES)
    }
    extra = ("n_test", "operating_threshold")
    order = [m for m in _MAIN_METRICS if m in numeric] + sorted(k for k in numeric if k not in _MAIN_METRICS + extra)
    rows = tuple((m, fmt(numeric[m]), _interval(metrics, m)) for m in order)
    blocks: list[_Block] = [_Heading("Test metrics")]
    if not rows:
        return [*blocks, _Para("No metrics were recorded.")]
    blocks += [
        _Para(
            f"On {fmt(metrics.get('n_test'))} test images, at operating threshold "
            f"{fmt(metrics.get('operating_threshold'))} (chosen on the validation split). "
            "Intervals are 95% bootstrap percentile intervals over test images."
        ),
        _Table(("metric", "value", "95% CI"), rows),
        _Heading("Subgroup metrics", 3),
    ]
    subgroups = metrics.get("subgroups") or {}
    if not subgroups:
        return [*blocks, _Para("The test data has no subgroup columns (site, sex, age band, scanner).")]
    for column, groups in sorted(subgroups.items()):
        table_rows = []
        for group, values in sorted(groups.items()):
            if values.get("computable", False):
                cells = tuple(fmt(values.get(m)) for m in _SUBGROUP_METRICS)
                note = ""
            else:
                cells = ("n/a",) * len(_SUBGROUP_METRICS)
                note = str(values.get("reason", "not computable"))
            table_rows.append((str(group), fmt(values.get("n")), *cells, note))
        blocks += [_Para(f"By {column}:"), _Table(("group", "n", *_SUBGROUP_METRICS, "note"), tuple(table_rows))]
    return blocks


def _interval(metrics: Mapping[str, Any], metric: str) -> str:
    lower, upper = metrics.get(f"{metric}_ci_lower"), metrics.get(f"{metric}_ci_upper")
    if lower is None and upper is None:
        return ""
    return f"{fmt(lower)} – {fmt(upper)}"


def _gate_blocks(gate: Mapping[str, Any] | None) -> list[_Block]:
    blocks: list[_Block] = [_Heading("Gate decision")]
    if gate is None:
        return [*blocks, _Para("No gate decision was recorded for this version.")]
    promote = bool(gate.get("promote"))
    blocks.append(_Para(f"{'PROMOTE' if promote else 'REFUSED'}: {gate.get('reason', '')}", "pass" if promote else "fail"))
    champion = gate.get("champion_version")
    compared = f"v{champion}" if champion is not None else "none (no production model: value thresholds only)"
    blocks.append(_Para(f"Compared against production model: {compared}."))
    if gate.get("champion_note"):
        blocks.append(_Para(str(gate["champion_note"])))
    checks = tuple(
        (
            str(c.get("kind", "")),
            str(c.get("metric", "")),
            fmt(c.get("value")),
            str(c.get("comparison", "")),
            fmt(c.get("threshold")),
            str(c.get("verdict", "")),
            str(c.get("detail", "")),
        )
        for c in gate.get("checks", ())
    )
    if checks:
        blocks.append(_Table(("check", "metric", "value", "comparison", "threshold", "verdict", "detail"), checks))
    return blocks


# -- renderers -----------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _to_markdown(title: str, blocks: Sequence[_Block]) -> str:
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, _Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, _Para):
            lines += [block.text, ""]
        elif isinstance(block, _List):
            lines += [f"- {item}" for item in block.items] + [""]
        else:
            lines.append("| " + " | ".join(map(_md_cell, block.headers)) + " |")
            lines.append("|" + "---|" * len(block.headers))
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 62rem; margin: 2rem auto;
       padding: 0 1rem; color: #1b1f24; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.pass { color: #116329; font-weight: 600; }
.fail { color: #a40e26; font-weight: 600; }
"""


def _inline_html(text: str) -> str:
    """Escape, then turn the one Markdown emphasis the blocks use (**bold**) into <strong>."""
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def _to_html(title: str, blocks: Sequence[_Block]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, _Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, _Para):
            tone = f' class="{block.tone}"' if block.tone else ""
            body.append(f"<p{tone}>{_inline_html(block.text)}</p>")
        elif isinstance(block, _List):
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>")
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
            rows = "".join(
                "<tr>" + "".join(_html_cell(h, cell) for h, cell in zip(block.headers, row, strict=True)) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _html_cell(header: str, cell: str) -> str:
    tone = f' class="{cell}"' if header == "verdict" and cell in ("pass", "fail") else ""
    return f"<td{tone}>{html.escape(cell)}</td>"
