import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT
from tests.integration.bento_fixtures import packaged, served  # noqa: F401 - session fixtures of the HTTP tests


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API (temporary database) for all flow runs of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_workspace(root: Path, overrides: dict) -> Path:
    """A temporary copy of the project's workspace files with `overrides` merged into params.yaml.

    `components` is linked in so dvc.yaml's code dependencies resolve as in the project.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(PROJECT / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    (root / "components").symlink_to(PROJECT / "components")
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for section, values in overrides.items():
        merge(params.setdefault(section, {}), values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def merge(target: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value


def set_params(workspace: Path, overrides: dict) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    for section, values in overrides.items():
        merge(params.setdefault(section, {}), values)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# A small cohort and a short training: the flow's mechanics, not the model's quality, are under test.
TINY = {
    "cohort": {"patients": 40, "images_per_patient": 3},
    "train": {"epochs": 4, "batch_size": 32},
    "evaluate": {"bootstrap_samples": 50},
    "serve": {"golden_set_size": 4},
    # Permissive on purpose: model quality is asserted by the unit tests and `make run`'s own gate.
    "gate": {"default": {
        "values": {"auc": {"lower": 0.0}, "sensitivity": {"lower": 0.0}, "specificity": {"lower": 0.0}},
        "changes": {"auc": {"direction": "higher", "absolute": -1.0}},
    }},
}


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("MEDGATE_DATABASE_URL", raising=False)
    monkeypatch.delenv("MEDGATE_WORKSPACE", raising=False)
    monkeypatch.setenv("MEDGATE_DEID_SALT", "test-salt")
    return os.environ
