"""validate: each check fails on its own defect and names the files; severities; drift; the report."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.privacy.names import file_pseudonym
from components.demo.cohort import generate_cohort
from components.config import default_params
from components.data.drift import compare_manifests, ks_distance
from components.stages.ingest import ingest_source
from components.stages.validate import CHECKS, validate_manifest

SALT = "validate-salt"


def _labelled(folder: Path, rows: list[tuple[str, np.ndarray, str, str, str]]) -> Path:
    """A labelled folder of .npy images: (file, pixels, label, patient_id, split)."""
    folder.mkdir(parents=True)
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id", "split"])
        for name, pixels, label, patient, split in rows:
            np.save(folder / name, pixels)
            writer.writerow([name, label, patient, split])
    return folder


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory):
    """One dataset with one defect per check, validated once."""
    root = tmp_path_factory.mktemp("broken")
    rng = np.random.default_rng(0)

    def img() -> np.ndarray:
        return rng.integers(0, 255, (16, 16)).astype(np.uint8)

    base = img()
    rows = [(f"a{i}.npy", img(), "a", f"p{i}", "train") for i in range(12)]
    rows += [(f"t{i}.npy", img(), "a", f"q{i}", "test") for i in range(3)]
    rows += [
        ("b0.npy", img(), "b", "r0", "train"),  # class b: 1 of 23 images, under min_class_fraction 0.1
        ("leak_train.npy", img(), "a", "P1", "train"), ("leak_test.npy", img(), "a", "P1", "test"),
        ("orig.npy", base, "a", "s1", "train"), ("copy.npy", base.copy(), "a", "s2", "val"),
        ("flat.npy", np.full((16, 16), 7, np.uint8), "a", "s3", "train"),
        ("bright.npy", np.full((16, 16), 1e6, np.float32) + rng.random((16, 16), dtype=np.float32), "a", "s4", "train"),
        ("tiny.npy", rng.integers(0, 255, (4, 4)).astype(np.uint8), "a", "s5", "train"),
        ("wide.npy", rng.integers(0, 255, (16, 16)).astype(np.int64), "a", "s6", "train"),
    ]
    src = _labelled(root / "src", rows)
    dataset = ingest_source(src, root / "ingest", default_params().ingest, SALT)
    cfg = default_params(validate={"min_rows": 100, "min_class_fraction": 0.1}).validate_
    result = validate_manifest(dataset.manifest, cfg, root / "report", list(dataset.problems), class_names=("a", "b", "c"))
    report = json.loads(result.report_json.read_text())
    failed = {}
    for o in report["expectations"]:
        if not o["success"]:
            failed.setdefault(o["check"], []).append(o)
    return result, report, failed


@pytest.mark.parametrize("check, offending", [
    ("patient_leakage", {"leak_train.npy", "leak_test.npy"}),
    ("duplicates_across_splits", {"orig.npy", "copy.npy"}),
    ("duplicate_images", {"orig.npy", "copy.npy"}),
    ("constant_images", {"flat.npy"}),
    ("intensity_range", {"bright.npy"}),
    ("image_size", {"tiny.npy"}),
    ("dtype", {"wide.npy"}),
    ("class_balance", {"b"}),
    ("label_set", {"missing label 'c'"}),
    ("row_count", set()),
])
def test_each_check_fails_on_its_defect_naming_the_files(broken, check: str, offending: set[str]) -> None:
    _, _, failed = broken
    assert check in failed, sorted(failed)
    names = {file_pseudonym(f"{stem}.npy", SALT): f"{stem}.npy" for stem in (
        "leak_train", "leak_test", "orig", "copy", "flat", "bright", "tiny", "wide")}
    named = {names.get(f, f) for o in failed[check] for f in o["offending"]}  # files by their pseudonyms
    assert named == offending


def test_only_the_planted_defects_fail_and_severities_decide(broken) -> None:
    result, report, failed = broken
    assert set(failed) == {"patient_leakage", "duplicates_across_splits", "duplicate_images", "constant_images",
                           "intensity_range", "image_size", "dtype", "class_balance", "label_set", "row_count"}
    assert not result.success and report["verdict"] == "failed"
    blocking = {f.split(":")[0] for f in result.failed_expectations}
    assert blocking == set(failed) - {"duplicate_images", "duplicates_across_splits"}  # warnings by default
    assert sorted(w.split(":")[0] for w in result.warnings) == ["duplicate_images", "duplicates_across_splits"]
    assert "expect_column_values_to_be_between(column='patient_splits', max_value=1.0)" in " ".join(result.failed_expectations)
    assert report["statistics"]["class_counts_by_split"]["test"] == {"a": 4}
    assert set(CHECKS) >= {o["check"] for o in report["expectations"]}


def test_report_is_one_offline_page_with_the_verdict_first(broken) -> None:
    result, _, _ = broken
    page = result.report_html.read_text()
    assert re.search(r"<(link|script)\b", page) is None
    assert set(re.findall(r"https?://[^\"'< ]+", page)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert page.index("FAILED") < page.index("Checks") < page.index("Class balance per split")
    assert page.index("Class balance per split") < page.index("Intensity histograms") < page.index("Thumbnails per class")
    assert page.count("data:image/png;base64,") >= 2 and "<svg" in page
    for name in (file_pseudonym(f, SALT) for f in ("leak_train.npy", "leak_test.npy", "copy.npy", "flat.npy", "bright.npy", "tiny.npy", "wide.npy")):
        assert name in page


@pytest.fixture(scope="module")
def cohort_ingest(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cohort")
    src = generate_cohort(root / "src", default_params(cohort={"patients": 12, "images_per_patient": 2, "image_size": 32, "seed": 5}).cohort)
    return ingest_source(src, root / "ingest", default_params().ingest, SALT), root


def test_cohort_passes_and_severity_and_drift_bounds_decide(cohort_ingest) -> None:
    dataset, root = cohort_ingest
    clean = validate_manifest(dataset.manifest, default_params().validate_, root / "clean", class_names=("normal", "lesion"), window=(40, 400))
    assert clean.success and clean.failed_expectations == () and clean.warnings == ()
    assert json.loads(clean.report_json.read_text())["verdict"] == "passed"
    assert "No production model" not in clean.report_html.read_text()  # no baseline note given: says so generically

    manifest = pd.read_parquet(dataset.manifest)
    baseline = manifest[manifest["label"] == "normal"]  # a production dataset of one class: class shares moved by 0.5
    drift = compare_manifests(baseline, manifest, default_params(drift={"max_class_share_change": 0.2}).drift, "ct-lesion v1 training data")
    relaxed = default_params(validate={"min_rows": 10**6, "severity": {"row_count": "warning"}}).validate_
    result = validate_manifest(dataset.manifest, relaxed, root / "drifted", drift=drift)
    assert [w.split(":")[0] for w in result.warnings] == ["row_count"]
    assert [f.split(":")[0] for f in result.failed_expectations] == ["drift_class_share"]
    page = result.report_html.read_text()
    assert "Drift against ct-lesion v1 training data" in page and "EXCEEDED" in page


def test_compare_manifests_statistics() -> None:
    def frame(labels, means, height, sites):
        n = len(labels)
        return pd.DataFrame({"label": labels, "intensity_mean": means, "intensity_std": np.ones(n), "intensity_min": np.zeros(n),
                             "intensity_max": np.full(n, 9.0), "height": np.full(n, height), "width": np.full(n, height),
                             "depth": np.ones(n, int), "site": sites})

    base = frame(["a"] * 50 + ["b"] * 50, np.linspace(0, 1, 100), 64, ["x"] * 100)
    same = compare_manifests(base, base, default_params(drift={"max_class_share_change": 0.0, "max_intensity_ks": 0.0}).drift, "base")
    assert same.blocking == () and {c.name: c.value for c in same.checks} == {
        "class_share": 0.0, "intensity_ks": 0.0, "size_change": 0.0, "site_share": 0.0}
    new = frame(["a"] * 80 + ["b"] * 20, np.linspace(0.5, 1.5, 100), 128, ["x"] * 50 + ["y"] * 50)
    moved = {c.name: c for c in compare_manifests(base, new, default_params(drift={"max_size_change": 0.5}).drift, "base").checks}
    assert moved["class_share"].value == pytest.approx(0.3) and moved["class_share"].bound is None
    assert moved["intensity_ks"].value == pytest.approx(0.5, abs=0.02)
    assert moved["size_change"].value == pytest.approx(1.0) and moved["size_change"].exceeded
    assert moved["site_share"].value == pytest.approx(0.5)
    no_site = compare_manifests(base.drop(columns="site"), new, default_params(drift={"max_site_share_change": 0.1}).drift, "base")
    assert [c.value for c in no_site.checks if c.name == "site_share"] == [None] and no_site.blocking == ()


def test_ks_distance_matches_its_definition() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1, 200)
    grid = np.sort(np.concatenate([a, b]))
    expected = max(abs((a <= x).mean() - (b <= x).mean()) for x in grid)
    assert ks_distance(a, b) == pytest.approx(expected)
    assert ks_distance(a, a) == 0.0


def test_suite_outcomes_are_memoized_for_the_same_manifest_params_and_classes(broken, cohort_ingest, tmp_path, monkeypatch) -> None:
    """The memo replaces only Great Expectations: verdict and report are those of a fresh validation."""
    import components.stages.validate as validate

    result, report, _ = broken  # a dataset with a failure of every check: offending files, observed values
    manifest, problems = result.report_json.parents[1] / "ingest" / "manifest.parquet", report["skipped_inputs"]
    cfg, memo, classes = default_params(validate={"min_rows": 100, "min_class_fraction": 0.1}).validate_, tmp_path / "state" / "suites.json", ("a", "b", "c")
    fresh = validate_manifest(manifest, cfg, tmp_path / "one", problems, class_names=classes, memo_file=memo)
    assert not fresh.suites_reused and memo.is_file() and not fresh.success

    def no_gx(*args, **kwargs):
        raise AssertionError("the suites ran again")

    monkeypatch.setattr(validate, "run_suites", no_gx)
    again = validate_manifest(manifest, cfg, tmp_path / "two", problems, class_names=classes, memo_file=memo)
    assert again.suites_reused and (again.success, again.failed_expectations, again.warnings) == (fresh.success, fresh.failed_expectations, fresh.warnings)
    assert again.report_json.read_text() == fresh.report_json.read_text()
    assert again.report_html.read_text() == fresh.report_html.read_text()
    # Other params, classes or another manifest are not in the memo: the suites must run.
    for other in ({"cfg": default_params(validate={"min_rows": 1}).validate_}, {"class_names": ("a", "b")}, {"manifest": cohort_ingest[0].manifest}):
        with pytest.raises(AssertionError, match="ran again"):
            validate_manifest(other.get("manifest", manifest), other.get("cfg", cfg), tmp_path / "three",
                              class_names=other.get("class_names", classes), memo_file=memo)
