"""Shared test set-up: offline settings, and a BentoML store of the session's own."""

import os
from pathlib import Path

import pytest

from flows.settings import configure_offline

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"

configure_offline()


@pytest.fixture(scope="session", autouse=True)
def bentoml_home(tmp_path_factory):
    """Never touch the user's ~/bentoml: every test session gets an empty store."""
    home = tmp_path_factory.mktemp("bentoml")
    os.environ["BENTOML_HOME"] = str(home)
    return home


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the real MedMNIST files live in ../shared/data beside the project")
    return path
