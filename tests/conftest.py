"""Shared test set-up: offline settings, a BentoML store of the session's own, and the tiers by folder."""

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from flows.settings import configure_offline

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"

configure_offline()

TIERS = ("unit", "integration", "scale")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test's tier is its folder (tests/unit, tests/integration, tests/scale): `-m unit`, `-m integration`,
    `-m scale` select them."""
    for item in items:
        tier = item.path.relative_to(PROJECT / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(tier)


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


def problems_by_file(problems: Iterable[Mapping[str, str]], files: Iterable[str], salt: str) -> dict[str, str]:
    """{file: reason} of ingest's problems, each file pseudonym turned back into the file of `files` it names
    (positions such as ``labels.csv:3`` stay as they are)."""
    from components.privacy.names import file_pseudonym

    names = {file_pseudonym(f, salt): f for f in files}
    return {names.get(p["file"], p["file"]): p["reason"] for p in problems}


def running(pid: int) -> bool:
    """Whether process `pid` runs (Linux /proc; a zombie has ended, only its status waits to be read)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: Iterable[int], what: str, timeout_s: float = 120) -> None:
    """Fail unless every process of `pids` has ended within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {sorted(p for p in pids if running(p))} still running after {timeout_s} s")
        time.sleep(0.1)
