"""Environment settings (MEDGATE_*), read once and lazily, and the offline switches.

Params that tune the pipeline live in params.yaml; these are facts of the installation.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from services.origin import LOOPBACK_NAMES

# Set before Prefect, DVC, BentoML or Great Expectations are imported or started, so that a
# `medgate` run by hand behaves like CI: no telemetry, nothing leaves the machine.
OFFLINE_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "GE_USAGE_STATS": "false",
    "HF_HUB_OFFLINE": "1",
}

def configure_offline() -> None:
    """Turn off telemetry and downloads for this process and its children (user values win), and keep
    loopback traffic (the Prefect API, the Bentos' probes) off any HTTP(S)_PROXY: it is added to NO_PROXY."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    for key in ("NO_PROXY", "no_proxy"):
        present = [h for h in os.environ.get(key, "").split(",") if h.strip()]
        os.environ[key] = ",".join(present + [h for h in LOOPBACK_NAMES if h not in present])


class _Env:
    """A settings attribute read from the environment variable `name` at each access; unset or empty: None."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> str | None:
        return os.environ.get(self.name) or None


@dataclass(frozen=True)
class Settings:
    workspace: Path
    database_url: str

    @property
    def deid_salt(self) -> str:
        """MEDGATE_DEID_SALT, else the workspace's own random salt."""
        return os.environ.get("MEDGATE_DEID_SALT") or _workspace_salt(self.state_dir)

    # Read at each access (the environment of the moment); unset or empty: None.
    webhook_url = _Env("MEDGATE_WEBHOOK_URL")  # where every finished run POSTs its summary (flows/notify.py)
    notify_block = _Env("MEDGATE_NOTIFY_BLOCK")  # a saved Prefect notification block, "<type-slug>/<name>"

    @property
    def data_root(self) -> Path:
        """MEDGATE_DATA_ROOT: where `medmnist:<name>` finds <name>.npz. Default: ../shared/data beside
        the workspace or the code, when present, else the workspace's data/medmnist."""
        if value := os.environ.get("MEDGATE_DATA_ROOT"):
            return Path(value).expanduser().resolve()
        for base in (self.workspace, Path(__file__).resolve().parents[1]):
            if (candidate := base.parent / "shared" / "data").is_dir():
                return candidate
        return self.workspace / "data" / "medmnist"

    # The DVC remote datasets and outputs are pushed to (a folder, or an S3-compatible URL such as
    # s3://bucket/medgate); unset: the project's default remote, else the workspace's local
    # .medgate/dvc-remote (flows.workspace.configure_remote). The endpoint is that of S3-compatible
    # storage (MinIO, Ceph).
    dvc_remote = _Env("MEDGATE_DVC_REMOTE")
    dvc_remote_endpoint = _Env("MEDGATE_DVC_REMOTE_ENDPOINT")

    @property
    def state_dir(self) -> Path:
        return self.workspace / ".medgate"

    @property
    def runs_dir(self) -> Path:
        return self.workspace / "runs"


def _workspace_salt(state_dir: Path) -> str:
    """A random de-identification salt kept in the workspace (0600), made on first use.

    Pseudonyms stay consistent across runs of one workspace and differ between workspaces.
    """
    path = state_dir / "deid_salt"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


@lru_cache(maxsize=None)
def get_settings(workspace: Path | None = None) -> Settings:
    """Settings for `workspace` (default: MEDGATE_WORKSPACE, else the current folder)."""
    ws = (workspace or Path(os.environ.get("MEDGATE_WORKSPACE", "."))).resolve()
    url = os.environ.get("MEDGATE_DATABASE_URL") or f"sqlite:///{ws / '.medgate' / 'registry.db'}"
    return Settings(workspace=ws, database_url=url)
