"""The review console in a real browser: `medgate ui` on 127.0.0.1, Debian's Chromium driven by
Playwright, with JavaScript off in every page (the console runs no script).

The registry is filled through the repository's functions (runs, datasets, versions, gate decisions,
an approval request) with small real report files, rather than by training; tests/integration/
test_approval_flow.py shows a real flow stopping at awaiting_approval. The test of the run page and
the one of the model page take the README's screenshots (saved into docs/screenshots/ by `make screenshots`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PROJECT

CHROMIUM = Path(os.environ.get("MEDGATE_CHROMIUM", "/usr/bin/chromium"))
# The README's pictures are rewritten only on request (`make screenshots`): a test run leaves the tree clean.
SCREENSHOTS = PROJECT / "docs" / "screenshots" if os.environ.get("MEDGATE_UPDATE_SCREENSHOTS") else None
PASSWORDS = {"ada": "ada-approves-1", "vic": "vic-only-views", "tom": "tom-trained-it"}
SHA = "5e" * 32
CHECKS = [
    {"kind": "value", "metric": "auc", "value": 0.912, "threshold": 0.85, "comparison": ">=", "verdict": "pass", "detail": ""},
    {"kind": "value", "metric": "sensitivity", "value": 0.84, "threshold": 0.7, "comparison": ">=", "verdict": "pass", "detail": ""},
    {"kind": "value", "metric": "specificity", "value": 0.81, "threshold": 0.7, "comparison": ">=", "verdict": "pass", "detail": ""},
    {"kind": "change", "metric": "auc", "value": 0.031, "threshold": -0.02, "comparison": "gain >=", "verdict": "pass",
     "detail": "candidate 0.9120, champion 0.8810"},
    {"kind": "serving", "metric": "golden_set_parity", "value": 1.0, "threshold": 1.0, "comparison": ">=", "verdict": "pass",
     "detail": "16 golden images answered as offline"},
    {"kind": "privacy", "metric": "identifiers_found", "value": 0.0, "threshold": 0.0, "comparison": "<=", "verdict": "pass", "detail": ""},
]

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: `make setup` installs Debian's chromium (as root)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def medgate(ws: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args, "--workspace", str(ws)], input=stdin,
                          capture_output=True, text=True, timeout=120, cwd=PROJECT)


def _report(path: Path, title: str, body: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><html><head><style>.fail{{color:#b42318}}</style><title>{title}</title></head>"
                    f"<body><h1>{title}</h1>{body}</body></html>")
    return str(path)


def fill_registry(ws: Path) -> dict[str, Any]:
    """Users, datasets, three runs and three versions of ct-lesion: v1 production, v2 awaiting approval
    (its run triggered by tom), v3 awaiting too; and a run whose data failed validation."""
    from console.auth import hash_password
    from registry import db, repository as repo, users

    url = f"sqlite:///{ws / '.medgate' / 'registry.db'}"
    db.upgrade_database(url)
    sessions = db.make_session_factory(url)
    runs = ws / "runs"
    made: dict[str, Any] = {}
    with sessions() as s:
        for name, role in (("ada", "approver"), ("vic", "viewer"), ("tom", "approver")):
            users.add_user(s, name, role, hash_password(PASSWORDS[name]), actor="test")
        good = repo.record_dataset(s, source="cohort:default", version="3f9a0c1de2b4" * 2 + "aa", kind="image", num_images=360,
                                   num_patients=120, counts={"normal": 240, "lesion": 120}, class_names=["normal", "lesion"],
                                   validation_success=True, report_path=None)
        for number, who in ((1, "medgate-ci"), (2, "tom"), (3, "tom")):
            run = repo.start_run(s, dataset_id=good.id, params={"train": {"epochs": 12}}, git_commit="8c1d2e3f4a5b",
                                 prefect_flow_run_id=None, trigger="manual", triggered_by=who)
            run_dir = runs / run.run_uid
            summary = {
                "run_id": run.run_uid, "model_name": "ct-lesion", "trigger": "manual", "status": "completed",
                "dataset": {"source": "cohort:default", "version": good.version, "kind": "image", "images": 360, "patients": 120},
                "validation": {"success": True, "failed_expectations": [], "warnings": ["intensity_range: 2 images outside [-1024, 3071] HU"],
                               "report": _report(run_dir / "validate" / "report.html", "Data quality: passed", "<p>17 checks passed</p>"),
                               "drift": [{"name": "class_share", "value": 0.021, "bound": 0.2, "detail": "", "exceeded": False},
                                         {"name": "intensity_ks", "value": 0.064, "bound": 0.3, "detail": "", "exceeded": False}]},
                "metrics": {"auc": 0.881 + 0.031 * (number - 1), "sensitivity": 0.84, "specificity": 0.81, "accuracy": 0.82, "ece": 0.041},
                "timings_s": {"ingest": 1.9, "validate": 2.4, "prepare": 3.1, "train": 41.7, "baseline": 6.2, "evaluate": 4.8,
                              "gate": 0.1, "package": 5.3, "smoke_test": 7.9, "promote": 0.4},
                "report": _report(run_dir / "report.html", f"Run report {run.run_uid[:8]}", "<p>ROC, calibration, subgroups</p>"),
            }
            repo.finish_run(s, run.run_uid, status="completed", summary=summary, dataset_id=good.id)
            mv = repo.register_model_version(s, name="ct-lesion", run_id=run.id, dataset_version=good.version, test_data_version="7d41aa",
                                             metrics=summary["metrics"], artifact_sha256=SHA, model_tag=f"ct-lesion:m{number}",
                                             bento_tag=f"ct-lesion:b{number}")
            champion = repo.get_champion(s, "ct-lesion")
            repo.record_gate_decision(s, model_version_id=mv.id, promote=True, checks=CHECKS, reason="all 6 checks passed",
                                      champion_version_id=champion.id if champion else None)
            s.commit()
            if number == 1:
                repo.promote_version(s, mv.id, actor="medgate-flow", reason="all 6 checks passed")
            else:
                repo.request_approval(s, mv.id, actor="medgate-flow", reason="all 6 checks passed; awaits an approver's sign-off")
            made[f"run{number}"] = run.run_uid
        bad = repo.record_dataset(s, source="cohort:default", version="c0ffee" * 5 + "00", kind="image", num_images=12,
                                  num_patients=4, counts={"normal": 12}, class_names=["normal", "lesion"], validation_success=False,
                                  report_path=None)
        run = repo.start_run(s, dataset_id=bad.id, params={}, git_commit="8c1d2e3f4a5b", prefect_flow_run_id=None,
                             trigger="watch", triggered_by="medgate")
        failed = "class_balance: expect_column_proportion_of_unique_values... share of class lesion 0.00 outside [0.1, 0.9]"
        report = _report(runs / run.run_uid / "validate" / "report.html", "Data quality: FAILED",
                         f"<p class=fail>class_balance failed</p><p>{failed}</p>")
        bad.report_path = report
        repo.finish_run(s, run.run_uid, status="failed", dataset_id=bad.id, error="ValidationFailed: validation failed (1 expectation(s))",
                        summary={"run_id": run.run_uid, "model_name": "ct-lesion", "trigger": "watch", "status": "failed",
                                 "validation": {"success": False, "report": report, "failed_expectations": [failed], "warnings": [],
                                                "drift": "no production model named ct-lesion yet: nothing to compare with"},
                                 "timings_s": {"ingest": 0.8, "validate": 1.2}})
        s.commit()
        made["bad"] = run.run_uid
    sessions.kw["bind"].dispose()
    return made


@pytest.fixture(scope="module")
def console(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """`medgate ui` on a free loopback port over a workspace filled by `fill_registry`."""
    ws = tmp_path_factory.mktemp("console") / "ws"
    made = fill_registry(ws)
    port = _free_port()
    env = {**os.environ, "MEDGATE_CONSOLE_SECRET": "test-secret"}
    env.pop("MEDGATE_DATABASE_URL", None)
    log = (ws / "ui.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "ui", "--port", str(port), "--workspace", str(ws)],
                            cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"medgate ui did not start: {(ws / 'ui.log').read_text()}")
            time.sleep(0.2)
        yield {"base": base, "ws": ws, **made}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page_as(browser, console):
    """`page_as(name)`: a page of a fresh browser context (JavaScript off) signed in as `name`."""
    contexts = []

    def open_as(name: str | None) -> Any:
        context = browser.new_context(java_script_enabled=False, base_url=console["base"], viewport={"width": 1280, "height": 860})
        contexts.append(context)
        page = context.new_page()
        if name is not None:
            page.goto("/login")
            page.fill("input[name=name]", name)
            page.fill("input[name=password]", PASSWORDS[name])
            page.click("button[type=submit]")
            assert page.url.endswith("/runs"), page.url
        return page

    yield open_as
    for context in contexts:
        context.close()


def _csrf(page: Any) -> str:
    return page.locator("input[name=csrf]").first.get_attribute("value")


def test_a_wrong_password_is_refused_and_pages_need_a_sign_in(page_as, console) -> None:
    page = page_as(None)
    response = page.goto("/models/ct-lesion")
    assert page.url.startswith(f"{console['base']}/login?next=") and response.status == 200
    page.fill("input[name=name]", "ada")
    page.fill("input[name=password]", "not-her-password")
    page.click("button[type=submit]")
    assert page.locator("#login-error").inner_text() == "wrong user name or password"
    assert "/login" in page.url
    page.fill("input[name=name]", "nobody")
    page.fill("input[name=password]", "whatever-password")
    page.click("button[type=submit]")
    assert page.locator("#login-error").is_visible()


def test_a_run_shows_its_data_quality_verdict_and_failed_check(page_as, console) -> None:
    page = page_as("ada")
    page.select_option("select[name=quality]", "failed")
    page.click("form.filters button[type=submit]")
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 1 and "failed" in rows.first.inner_text()
    rows.first.locator("a").first.click()
    assert page.url.endswith(f"/runs/{console['bad']}")
    assert page.locator("#quality h2").inner_text() == "Data quality: failed"
    assert "class_balance" in page.locator("#failed-checks").inner_text()
    assert "ValidationFailed" in page.locator("#run-error").inner_text()
    page.click("text=Open the data-quality report")  # served by the console from the run's folder
    assert page.locator("h1").inner_text() == "Data quality: FAILED" and "class_balance failed" in page.content()

    page.goto(f"/runs/{console['run2']}")
    assert page.locator("#quality h2").inner_text() == "Data quality: passed"
    assert page.locator("#gate-checks tbody tr").count() == len(CHECKS)
    assert page.locator("#timings tr").count() == 10
    shot = page.screenshot(path=str(SCREENSHOTS / "run.png") if SCREENSHOTS else None, full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    page.click("text=run report")
    assert page.locator("h1").inner_text().startswith("Run report")


def test_a_viewer_is_refused_an_approval(page_as, console) -> None:
    page = page_as("vic")
    page.goto("/models/ct-lesion/3")
    assert page.locator("#stage").inner_text() == "awaiting_approval"
    assert page.locator("form[action$='/approve']").count() == 0  # no sign-off form for a viewer
    refused = page.request.post(f"{console['base']}/models/ct-lesion/3/approve", form={"csrf": _csrf(page), "reason": "looks fine"})
    assert refused.status == 403 and "only an approver" in refused.text()
    page.reload()
    assert page.locator("#stage").inner_text() == "awaiting_approval"


def test_a_form_without_its_csrf_token_is_refused(page_as, console) -> None:
    page = page_as("ada")
    page.goto("/models/ct-lesion/3")
    assert page.locator("form[action$='/approve']").count() == 1
    for form in ({"reason": "no token"}, {"reason": "forged token", "csrf": "x" * 43}):
        refused = page.request.post(f"{console['base']}/models/ct-lesion/3/approve", form=form)
        assert refused.status == 403 and "CSRF" in refused.text()
    other = page_as(None)  # a sign-in form posted with no token of its session
    assert other.request.post(f"{console['base']}/login", form={"name": "ada", "password": PASSWORDS["ada"]}).status == 403
    page.reload()
    assert page.locator("#stage").inner_text() == "awaiting_approval"


def test_the_triggerer_may_not_approve_but_another_approver_does(page_as, console) -> None:
    tom = page_as("tom")
    tom.goto("/models/ct-lesion/2")
    tom.fill("form[action$='/approve'] textarea", "my own run")
    tom.click("form[action$='/approve'] button")
    assert "triggered this candidate's run" in tom.locator("#problem").inner_text()

    page = page_as("ada")
    page.goto("/models/ct-lesion")
    assert page.locator("#awaiting-2").is_visible() and page.locator("#awaiting-3").is_visible()
    page.fill("#awaiting-2 form[action$='/approve'] textarea", "reviewed the subgroup table and the report")
    page.click("#awaiting-2 form[action$='/approve'] button")
    assert page.url.endswith("/models/ct-lesion/2")
    assert page.locator("#stage").inner_text() == "production"
    page.goto("/models/ct-lesion")
    stages = page.locator("#versions tbody tr td:nth-child(2)").all_inner_texts()
    assert stages == ["awaiting_approval", "production", "archived"]
    assert "v2" in page.locator("#history tbody tr").first.inner_text()
    shot = page.screenshot(path=str(SCREENSHOTS / "model.png") if SCREENSHOTS else None, full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"

    page.goto("/audit")
    page.select_option("select[name=actor]", "ada")
    page.click("form.filters button[type=submit]")
    rows = page.locator("#audit tbody tr").all_inner_texts()
    assert any("promote" in r and "ct-lesion v2" in r and "approved: reviewed the subgroup table" in r for r in rows), rows
    assert any("sign-in" in r for r in rows), rows

    page.goto("/models/ct-lesion/compare?a=1&b=2")
    assert "+0.0310" in page.locator("#compare").inner_text()


def test_off_loopback_the_console_needs_a_user(tmp_path: Path) -> None:
    refused = medgate(tmp_path / "empty", "ui", "--host", "0.0.0.0")
    assert refused.returncode == 2 and "no user" in refused.stdout
    added = medgate(tmp_path / "empty", "users", "add", "ann", "--role", "admin", "--password-stdin", stdin="long-enough-pw\n")
    assert added.returncode == 0, added.stdout + added.stderr
    listed = medgate(tmp_path / "empty", "users", "list", "--json")
    assert '"name": "ann"' in listed.stdout and "long-enough-pw" not in listed.stdout
    shutil.rmtree(tmp_path / "empty")
