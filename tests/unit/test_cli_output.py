"""`medgate` output through a pipe: paths and table rows stay whole lines (cli.common.UnwrappedConsole),
read from a real pipe in a workspace whose path is far wider than 80 columns; libraries' log records
and warnings go to a log file, not the console (flows.logs)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import cli.common
from registry import db, repository as repo
from cli.common import UnwrappedConsole, print_summary
from flows.logs import library_log
from tests.conftest import PROJECT

LONG = "a-folder-name-long-enough-that-one-path-is-wider-than-a-terminal-"
SHA = "ab" * 32


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """An empty workspace folder about 250 characters deep."""
    path = tmp_path / f"{LONG}1" / f"{LONG}2" / f"{LONG}3"
    path.mkdir(parents=True)
    return path


def medgate(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`medgate ARGS --workspace WS` with stdout and stderr read from pipes."""
    env = {k: v for k, v in os.environ.items() if k not in ("MEDGATE_DATABASE_URL", "MEDGATE_WORKSPACE", "COLUMNS")}
    return subprocess.run([sys.executable, "-m", "cli", *args, "--workspace", str(ws)], cwd=PROJECT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120, check=False)


def fake_summary(run_dir: Path) -> dict:
    """A finished run's summary.json (as flows.pipeline writes it) whose files exist."""
    run_dir.mkdir(parents=True)
    report, quality = run_dir / "report.html", run_dir / "validate" / "report.html"
    quality.parent.mkdir()
    report.write_text("<html></html>")
    quality.write_text("<html></html>")
    summary = {
        "run_id": run_dir.name, "status": "completed", "model_name": "pneumonia-classifier-for-a-long-table-cell",
        "model_version": 3, "bento_tag": "pneumonia_classifier_for_a_long_table_cell:abcdefabcdef0123",
        "production": {"model": "pneumonia-classifier-for-a-long-table-cell", "version": 3,
                       "bento_tag": "pneumonia_classifier_for_a_long_table_cell:abcdefabcdef0123"},
        "dataset": {"source": str(run_dir.parent / "source-folder"), "kind": "dicom", "version": "md5-" + "0" * 32,
                    "images": 120, "patients": 40},
        "validation": {"success": True, "report": str(quality)},
        "metrics": {"auc": 0.91, "accuracy": 0.85},
        "gate": {"promote": True, "reason": "every check passed, including one named at some length",
                 "checks": [{"kind": "value", "metric": "subgroup.site=site-a-with-a-long-name.sensitivity", "value": 0.9,
                             "comparison": ">=", "threshold": 0.8, "verdict": "pass"}]},
        "report": str(report),
        "summary_path": str(run_dir / "summary.json"),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def test_print_summary_keeps_each_path_and_table_row_on_one_line(ws: Path, monkeypatch) -> None:
    summary = fake_summary(ws / "runs" / "20260101-abcdef")
    out = io.StringIO()
    monkeypatch.setattr(cli.common, "console", UnwrappedConsole(file=out))
    print_summary(summary)
    lines = out.getvalue().splitlines()
    assert f"report: {summary['report']}" in lines
    assert f"summary: {summary['summary_path']}" in lines
    assert f"data quality: passed; report {summary['validation']['report']}" in lines
    assert any(summary["dataset"]["source"] in line for line in lines)
    [row] = [line for line in lines if "subgroup.site=site-a-with-a-long-name.sensitivity" in line]
    assert "0.9000" in row and "0.8000" in row and "pass" in row
    assert any(summary["bento_tag"] in line and line.startswith("model: ") for line in lines)


def test_on_a_terminal_the_console_still_wraps(ws: Path, monkeypatch) -> None:
    summary = fake_summary(ws / "runs" / "20260101-abcdef")
    out = io.StringIO()
    monkeypatch.setattr(cli.common, "console", UnwrappedConsole(file=out, force_terminal=True, width=80, color_system=None))
    print_summary(summary)
    assert f"summary: {summary['summary_path']}" not in out.getvalue().splitlines()
    assert max(len(line) for line in out.getvalue().splitlines()) <= 80


def test_report_paths_and_errors_are_whole_lines_in_a_pipe(ws: Path) -> None:
    summary = fake_summary(ws / "runs" / "20260101-abcdef")
    found = medgate(ws, "report")
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines() == [summary["report"]]
    quality = medgate(ws, "data", "report")
    assert quality.returncode == 0, quality.stderr
    assert quality.stdout.splitlines() == [summary["validation"]["report"]]
    missing = medgate(ws, "report", "nosuchrun")
    assert missing.returncode == 2
    assert missing.stdout.splitlines() == [f"error: no run 'nosuchrun' in {ws / 'runs'}"]


def test_registry_tables_keep_their_cells_whole_in_a_pipe(ws: Path) -> None:
    name, bento = "pneumonia-classifier-for-a-long-table-cell", "pneumonia_classifier_for_a_long_table_cell:abcdefabcdef0123"
    reason = "promoted by hand after reviewing the subgroup metrics of every site, a reason longer than a table cell"
    url = f"sqlite:///{ws / '.medgate' / 'registry.db'}"
    db.upgrade_database(url)
    with db.make_session_factory(url)() as session:
        dataset = repo.record_dataset(session, source=str(ws / "source"), version="md5-0123", kind="dicom", num_images=10,
                                     num_patients=5, counts={}, class_names=["normal", "lesion"], validation_success=True,
                                     report_path=str(ws / "runs" / "x" / "validate" / "report.html"))
        run = repo.start_run(session, dataset_id=dataset.id, params={}, git_commit=None, prefect_flow_run_id=None, trigger="manual")
        version = repo.register_model_version(session, name=name, run_id=run.id, dataset_version="md5-0123",
                                             test_data_version="md5-test", metrics={"auc": 0.9, "accuracy": 0.8},
                                             artifact_sha256=SHA, bento_tag=bento)
        session.commit()
        repo.promote_version(session, version.id, actor="reviewer", reason=reason)

    listed = medgate(ws, "models", "list")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if name in line]
    assert bento in row and "production" in row and "0.9000" in row
    audit = medgate(ws, "audit")
    assert audit.returncode == 0, audit.stderr
    assert any(reason in line and name in line for line in audit.stdout.splitlines()), audit.stdout
    datasets = medgate(ws, "data", "list")
    assert datasets.returncode == 0, datasets.stderr
    assert any(str(ws / "source") in line and str(ws / "runs") in line for line in datasets.stdout.splitlines()), datasets.stdout


def test_library_records_and_warnings_go_to_the_log_not_the_console(tmp_path: Path) -> None:
    console = io.StringIO()
    shown = logging.StreamHandler(console)
    root = logging.getLogger()
    root.addHandler(shown)
    showwarning = warnings.showwarning
    try:
        with library_log(tmp_path / "runs" / "r1" / "libraries.log") as log:
            try:
                raise ValueError("The RLE header specifies an invalid number of segments (99)")
            except ValueError as exc:
                logging.getLogger("pydicom.pixels.decoders.base").exception(exc)
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("non-conformant padding", UserWarning, stacklevel=1)
            logging.getLogger("components.stages.ingest").warning("one line of our own")
        logging.getLogger("pydicom").warning("after the block: the console again")
    finally:
        root.removeHandler(shown)
    assert console.getvalue().splitlines() == ["one line of our own", "after the block: the console again"]
    detail = log.read_text()
    assert "Traceback" in detail and "invalid number of segments" in detail and "non-conformant padding" in detail
    assert "our own" not in detail
    assert warnings.showwarning is showwarning


def test_run_outside_a_workspace_names_init_which_makes_one(tmp_path: Path) -> None:
    folder = tmp_path / "new"
    refused = medgate(folder, "run")
    assert refused.returncode == 2 and "`medgate init" in refused.stdout and "no params.yaml" in refused.stdout
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    made = subprocess.run([sys.executable, "-m", "cli", "init", str(folder)], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert made.returncode == 0 and "default params.yaml" in made.stdout, made.stderr
    assert (folder / "params.yaml").read_text() == (PROJECT / "params.yaml").read_text() and (folder / "dvc.yaml").is_file()
    (folder / "params.yaml").write_text((PROJECT / "params.yaml").read_text().replace("seed: 13", "seed: 14"))
    again = subprocess.run([sys.executable, "-m", "cli", "init", str(folder)], cwd=PROJECT, env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert again.returncode == 0 and "seed: 14" in (folder / "params.yaml").read_text()  # a workspace's own settings stay
