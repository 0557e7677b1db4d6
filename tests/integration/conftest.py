import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from flows.workspace import create_workspace as make_workspace  # noqa: F401 - used by the tests here
from flows.workspace import update_params as set_params  # noqa: F401
from tests.integration.bento_fixtures import packaged, served  # noqa: F401 - session fixtures of the HTTP tests


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API (temporary database) for all flow runs of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# A small cohort and a short training: the flow's mechanics, not the model's quality, are under test.
TINY = {
    "cohort": {"patients": 40, "images_per_patient": 3},
    "train": {"epochs": 2, "batch_size": 32},
    "evaluate": {"bootstrap_samples": 20},
    "serve": {"golden_set_size": 4},
    # Permissive on purpose: model quality is asserted by the unit tests and `make run`'s own gate.
    "gate": {"default": {
        "values": {"auc": {"lower": 0.0}, "sensitivity": {"lower": 0.0}, "specificity": {"lower": 0.0}},
        "changes": {"auc": {"direction": "higher", "absolute": -1.0}},
    }},
}


def set_clean_env(mp: pytest.MonkeyPatch) -> None:
    """The default registry and workspace, and a fixed de-identification salt."""
    mp.delenv("MEDGATE_DATABASE_URL", raising=False)
    mp.delenv("MEDGATE_WORKSPACE", raising=False)
    mp.setenv("MEDGATE_DEID_SALT", "test-salt")


@pytest.fixture
def clean_env(monkeypatch):
    set_clean_env(monkeypatch)
    return os.environ


@pytest.fixture(scope="session")
def first_run(tmp_path_factory, prefect_api) -> dict[str, Any]:
    """One flow run on TINY for the session: its workspace `ws` (a test may run on in it), its `summary`,
    and `snapshot`, the workspace as the run left it (copy it with `first_run_copy`, never change it)."""
    from flows.pipeline import training_flow

    root = tmp_path_factory.mktemp("first-run")
    with pytest.MonkeyPatch.context() as mp:
        set_clean_env(mp)
        ws = make_workspace(root / "ws", TINY)
        summary = training_flow(workspace=str(ws))
    shutil.copytree(ws, root / "snapshot", symlinks=True)
    return {"ws": ws, "summary": summary, "snapshot": root / "snapshot"}


@pytest.fixture
def first_run_copy(first_run, tmp_path) -> Path:
    """A workspace of this test's own where the first run has completed: a re-run finds everything unchanged."""
    return Path(shutil.copytree(first_run["snapshot"], tmp_path / "ws", symlinks=True))
