"""The model card: every section from the facts given, Markdown and HTML saying the same, HTML self-contained."""

import math
import re
from dataclasses import replace
from html.parser import HTMLParser

from components.config import ModelCardText
from components.documents.modelcard import HTML_FILE, MARKDOWN_FILE, CardFacts, render_model_card

USE = ModelCardText(
    intended_use="Triage research on chest CT.",
    intended_users="Radiology researchers.",
    limitations=("Single-site data only.",),
    out_of_scope=("Paediatric patients.",),
)
METRICS = {
    "auc": 0.912345,
    "auc_ci_lower": 0.85,
    "auc_ci_upper": 0.96,
    "accuracy": 0.8,
    "accuracy_ci_lower": 0.7,
    "accuracy_ci_upper": 0.88,
    "sensitivity": 0.81,
    "specificity": 0.79,
    "ece": math.nan,
    "n_test": 120,
    "operating_threshold": 0.4321,
    "subgroups": {
        "site": {
            "site-a": {"n": 60, "computable": True, "auc": 0.93, "sensitivity": 0.8, "specificity": 0.82, "accuracy": 0.81},
            "site-b": {"n": 3, "computable": False, "reason": "one class only in this subgroup"},
        }
    },
}
GATE = {
    "promote": False,
    "reason": "refused: auc gain >= -0.02",
    "champion_version": 3,
    "champion_note": "champion v3 was re-evaluated on the candidate's test data",
    "checks": [
        {"kind": "value", "metric": "auc", "value": 0.912345, "threshold": 0.85, "comparison": ">=", "verdict": "pass", "detail": ""},
        {"kind": "change", "metric": "auc", "value": -0.031, "threshold": -0.02, "comparison": "gain >=", "verdict": "fail",
         "detail": "candidate 0.9123, champion 0.9433"},
    ],
}
LINEAGE = {
    "run_id": "run-uid-1",
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "params_hash": "f" * 64,
    "prefect_flow_run_id": "flow-run-9",
    "dataset_version": "d" * 32,
    "test_data_version": "e" * 32,
    "model_tag": "ct-lesion:abc123",
    "bento_tag": "ct-lesion:def456",
    "artifact_sha256": "a" * 64,
}
DATASET = {
    "source": "/data/ct|export",
    "version": "d" * 32,
    "kind": "dicom",
    "num_images": 480,
    "num_patients": 120,
    "class_names": ["benign", "lesion"],
    "validation_success": True,
    "report_path": "/ws/runs/run-uid-1/validate/report.html",
}


PARAMS = {"train": {"model": {"family": "auto", "width": 16}, "learning_rate": 0.003, "augment": {"flip_axes": [-1, -2]}, "amp": True}}
HISTORY = (
    {"at": "2025-01-02T03:00:00+00:00", "actor": "medgate", "action": "register", "from_stage": None, "to_stage": "candidate",
     "reason": "registered from run 7"},
    {"at": "2025-01-02T04:00:00+00:00", "actor": "dr-lee", "action": "promote", "from_stage": "candidate", "to_stage": "production",
     "reason": "OVERRIDE of a refused gate: accepted; failing checks: change auc"},
)


def facts(**changes):
    base = CardFacts(
        model_name="ct-lesion", model_version=4, stage="rejected", use=USE, dataset=DATASET, metrics=METRICS,
        gate=GATE, lineage=LINEAGE, generated_at="2025-01-02T03:04:05+00:00", params=PARAMS, history=HISTORY,
    )
    return replace(base, **changes)


def test_markdown_has_every_section_and_fact():
    md = render_model_card(facts()).markdown
    assert md.startswith("# Model card: ct-lesion v4\n")
    for heading in ("## Intended use", "### Out of scope", "### Limitations", "## Training data", "## Test metrics",
                    "### Subgroup metrics", "## Gate decision", "## Stage history (audit log)", "## Lineage",
                    "### Parameters"):
        assert heading in md
    for text in (USE.intended_use, USE.intended_users, "- Single-site data only.", "- Paediatric patients."):
        assert text in md
    assert "| auc | 0.9123 | 0.8500 – 0.9600 |" in md
    assert "| accuracy | 0.8000 | 0.7000 – 0.8800 |" in md
    assert "| ece | n/a |" in md  # NaN is shown as not available, never as a number
    assert "On 120 test images, at operating threshold 0.4321" in md
    assert "| site-a | 60 | 0.9300 |" in md
    assert "| site-b | 3 | n/a | n/a | n/a | n/a | one class only in this subgroup |" in md
    assert "REFUSED: refused: auc gain >= -0.02" in md
    assert "Compared against production model: v3." in md
    assert GATE["champion_note"] in md
    assert "| change | auc | -0.0310 | gain >= | -0.0200 | fail | candidate 0.9123, champion 0.9433 |" in md
    assert "| data quality (Great Expectations) | passed |" in md
    assert "| source | /data/ct\\|export |" in md  # a pipe in a value does not break the table
    assert "| classes | benign, lesion |" in md
    for value in LINEAGE.values():
        assert value in md
    assert "| 2025-01-02T03:00:00+00:00 | medgate | register | - -> candidate | registered from run 7 |" in md
    assert "| dr-lee | promote | candidate -> production | OVERRIDE of a refused gate: accepted; failing checks: change auc |" in md
    for row in ("| train.model.family | auto |", "| train.model.width | 16 |", "| train.learning_rate | 0.003 |",
                "| train.augment.flip_axes | -1, -2 |", "| train.amp | true |"):
        assert row in md
    assert "Stage: **rejected**" in md


def test_html_is_self_contained_and_says_what_the_markdown_says():
    card = render_model_card(facts(use=USE.model_copy(update={"intended_use": "Use <script>alert(1)</script> & more"})))
    page = card.html
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"(https?:)?//[a-z]|<link|<script|src=", page, re.IGNORECASE)
    assert "Use &lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    for value in ("0.8500 – 0.9600", "one class only in this subgroup", LINEAGE["bento_tag"], LINEAGE["git_commit"],
                  "Stage: <strong>rejected</strong>", '<td class="fail">fail</td>', '<td class="pass">pass</td>'):
        assert value in page

    class Balance(HTMLParser):
        void = {"meta"}

        def __init__(self):
            super().__init__()
            self.open: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag not in self.void:
                self.open.append(tag)

        def handle_endtag(self, tag):
            assert self.open.pop() == tag

    parser = Balance()
    parser.feed(page)
    assert parser.open == []
    assert card.files() == {MARKDOWN_FILE: card.markdown, HTML_FILE: card.html}


def test_failed_data_quality_and_missing_facts_are_said_plainly():
    md = render_model_card(
        facts(gate=None, dataset={"version": "d" * 32, "validation_success": False},
              metrics={"auc": 0.7}, lineage={"run_id": "r"}, params=None, history=())
    ).markdown
    assert "No stage change was recorded for this version." in md and "### Parameters" not in md
    assert "| data quality (Great Expectations) | FAILED |" in md
    assert "No gate decision was recorded for this version." in md
    assert "The test data has no subgroup columns" in md
    assert "| Bento | n/a |" in md and "| git commit | n/a |" in md


def test_no_champion_and_a_promoted_decision():
    gate = {**GATE, "promote": True, "reason": "no champion: value thresholds only; all 1 checks passed",
            "champion_version": None, "champion_note": "", "checks": GATE["checks"][:1]}
    md = render_model_card(facts(gate=gate, stage="production")).markdown
    assert "PROMOTE: no champion" in md
    assert "Compared against production model: none (no production model: value thresholds only)." in md
    assert "| change |" not in md


def test_rendering_is_pure():
    assert render_model_card(facts()) == render_model_card(facts())
