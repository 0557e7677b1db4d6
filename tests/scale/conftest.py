"""The scale tier: each test starts the real servers it needs on 127.0.0.1 (tests/scale/servers.py)."""

from pathlib import Path

import pytest

from tests.integration.conftest import TINY, prefect_api  # noqa: F401 - the in-process flow runs' Prefect API
from tests.scale.servers import base_env, postgres_problem


@pytest.fixture(scope="session")
def postgres() -> None:
    """Skip, with the reason, where PostgreSQL does not answer (CI runs this tier only where it does)."""
    if problem := postgres_problem():
        pytest.skip(problem)


@pytest.fixture
def env(tmp_path: Path, bentoml_home: Path) -> dict[str, str]:
    """The environment of the servers and commands a test starts: offline, this session's BentoML store,
    a Prefect home of the test's own, a fixed de-identification salt."""
    return {**base_env(tmp_path), "BENTOML_HOME": str(bentoml_home), "MEDGATE_DEID_SALT": "test-salt"}


# The quickest runs the flow offers (the integration tier's TINY): the tier tests the wiring between
# machines, not the model. One epoch fewer: every test here runs the flow more than once.
QUICK = {**TINY, "train": {**TINY["train"], "epochs": 1}}
