"""What a finished run tells the outside: Prefect tags and artifacts, a webhook, a notification block.

Set `MEDGATE_WEBHOOK_URL` to have every finished run POST its summary (JSON) there, and/or
`MEDGATE_NOTIFY_BLOCK` to a saved Prefect notification block ("<block-type-slug>/<name>", e.g.
`slack-webhook/ops` or `custom-webhook/ops`) to have it notified. The Prefect artifacts of the
run (Artifacts page of the UI) link the data-quality report, the run report and the model card.
None of this can fail a run: a notice that cannot be sent is logged as a warning.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
from prefect import get_run_logger, task
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows.settings import Settings

# The summary fields a notice carries; the full record stays in summary.json and the registry.
NOTICE_FIELDS = (
    "run_id", "status", "trigger", "model_name", "model_version", "bento_tag", "production", "metrics",
    "stages_reused", "reused_production", "error", "drift", "awaiting_approval",
)
LINKS = (("validation", "report", "data-quality report"), (None, "report", "run report"), (None, "model_card", "model card"))
KEY_METRICS = ("auc", "auc_ci_lower", "sensitivity", "specificity", "ece")


def dataset_label(source: str) -> str:
    return Path(source.rstrip("/")).name or source


def run_tags(model_name: str, source: str, trigger: str) -> list[str]:
    return [f"model:{model_name}", f"dataset:{dataset_label(source)}", f"trigger:{trigger}"]


def label_flow_run(model_name: str, source: str, trigger: str) -> None:
    """Tag the current flow run with its model, dataset and trigger (filters in the Prefect UI)."""
    from prefect.client.orchestration import get_client

    run_id = flow_run.get_id()
    if not run_id:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, tags=sorted({*flow_run.get_tags(), *run_tags(model_name, source, trigger)}))
    except Exception as exc:  # tags are a convenience of the UI, never a reason to fail
        get_run_logger().warning("flow run not tagged: %s: %s", type(exc).__name__, exc)


def report_links(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, file URI) of the data-quality report, run report and model card that exist."""
    links = []
    for section, field, title in LINKS:
        value = (summary.get(section) or {}).get(field) if section else summary.get(field)
        if value and Path(value).exists():
            links.append((title, Path(value).resolve().as_uri()))
    return links


def notice(summary: dict[str, Any]) -> dict[str, Any]:
    """The JSON a webhook receives: outcome, gate verdict, key metrics and report links."""
    gate = summary.get("gate") or {}
    body = {k: summary[k] for k in NOTICE_FIELDS if summary.get(k) is not None}
    body["gate"] = {"promote": gate.get("promote"), "reason": gate.get("reason"), "failed_checks": [
        f"{c['kind']} {c['metric']}" for c in gate.get("checks", []) if c.get("verdict") == "fail"
    ]} if gate else None
    body["dataset"] = {k: (summary.get("dataset") or {}).get(k) for k in ("source", "version", "images")}
    body["links"] = dict(report_links(summary))
    return body


def render_markdown(summary: dict[str, Any]) -> str:
    """The run's Prefect markdown artifact: verdict, key metrics, gate checks, links to the reports."""
    gate = summary.get("gate") or {}
    verdict = ("AWAITING APPROVAL" if summary.get("awaiting_approval") else "PROMOTED") if gate.get("promote") else "refused" if gate else summary.get("status", "?")
    lines = [
        f"# {summary.get('model_name')} run {summary.get('run_id')}",
        f"- status: **{summary.get('status')}**, trigger: {summary.get('trigger')}",
        f"- gate: **{verdict}**" + (f" ({gate.get('reason')})" if gate.get("reason") else ""),
    ]
    if summary.get("model_version"):
        lines.append(f"- model version: {summary['model_version']}, bento: {summary.get('bento_tag') or '-'}")
    if summary.get("reused_production"):
        lines.append(f"- unchanged: production v{summary['reused_production']} is this model; nothing re-registered")
    if summary.get("stages_reused"):
        lines.append(f"- stages reused (unchanged): {', '.join(summary['stages_reused'])}")
    if summary.get("error"):
        lines.append(f"- error: `{summary['error'][:500]}`")
    metrics = summary.get("metrics") or {}
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {metrics[k]:.4f} |" for k in KEY_METRICS if k in metrics]
    if gate.get("checks"):
        lines += ["", "| check | metric | value | threshold | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {c['kind']} | {c['metric']} | {c.get('value')} | {c.get('comparison', '')} {c.get('threshold')} | {c['verdict']} |" for c in gate["checks"]]
    links = report_links(summary)
    if links:
        lines += ["", "## Reports"] + [f"- [{title}]({uri})" for title, uri in links]
    return "\n".join(lines)


def _key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def create_artifacts(summary: dict[str, Any]) -> None:
    """A markdown artifact of the run and one link artifact per report (keys per model name)."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    name = str(summary.get("model_name") or "model")
    create_markdown_artifact(render_markdown(summary), key=_key(name, "run-summary"), description=f"medgate run {summary.get('run_id')}")
    for title, uri in report_links(summary):
        create_link_artifact(uri, link_text=title, key=_key(name, title), description=f"{title} of run {summary.get('run_id')}")


class WebhookFailed(RuntimeError):
    """The webhook did not take the notice; the message names only its scheme and host."""


def redacted_url(url: str) -> str:
    """`url` as scheme and host only: a webhook's path and query are often its secret."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "(an unparseable URL)"
    return f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "") + "/…"


class _RedactUrl(logging.Filter):
    """Replaces `url` in log records' arguments by its redacted form (httpx logs each request's URL)."""

    def __init__(self, url: str):
        super().__init__()
        self.url, self.shown = url, redacted_url(url)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(str(a) == self.url for a in record.args):
            record.args = tuple(self.shown if str(a) == self.url else a for a in record.args)
        return True


@task(name="notify_webhook", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def notify_webhook_task(url: str, body: dict[str, Any]) -> int:
    """POST the notice to `url`; WebhookFailed names the error's type, the status and the URL's host only."""
    redact = _RedactUrl(url)
    httpx_logger = logging.getLogger("httpx")
    httpx_logger.addFilter(redact)
    try:
        response = httpx.post(url, content=json.dumps(body, default=str), headers={"content-type": "application/json"}, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        status = f" (HTTP {exc.response.status_code})" if isinstance(exc, httpx.HTTPStatusError) else ""
        raise WebhookFailed(f"webhook {redact.shown} failed: {type(exc).__name__}{status}") from None
    finally:
        httpx_logger.removeFilter(redact)
    return response.status_code


@task(name="notify_block", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def notify_block_task(block: str, body: dict[str, Any]) -> None:
    from prefect.blocks.core import Block

    gate = body.get("gate") or {}
    subject = f"medgate {body.get('model_name')}: {body.get('status')}" + (f", {'promoted' if gate.get('promote') else 'refused'}" if gate else "")
    Block.load(block).notify(json.dumps(body, indent=1, default=str), subject=subject)  # type: ignore[attr-defined]


def publish_run(summary: dict[str, Any], settings: Settings) -> None:
    """Artifacts, then the configured webhook and notification block; failures only warn."""
    logger = get_run_logger()
    steps: list[tuple[str, Any]] = [("artifacts", lambda: create_artifacts(summary))]
    if settings.webhook_url:
        steps.append(("webhook", lambda: notify_webhook_task(settings.webhook_url, notice(summary))))
    if settings.notify_block:
        steps.append(("notification block", lambda: notify_block_task(settings.notify_block, notice(summary))))
    for what, send in steps:
        try:
            send()
        except Exception as exc:  # the run's outcome is decided; telling others must not change it
            logger.warning("%s not sent: %s: %s", what, type(exc).__name__, exc)
