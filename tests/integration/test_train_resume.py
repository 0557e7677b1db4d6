"""A `dvc repro` killed (SIGKILL) in the middle of training continues from its last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from components.config import default_params
from components.stages.prepare import prepare_dataset
from components.data.artifacts import CHECKPOINT_FILE, TRAINING_FILE
from flows.workspace import tool_env
from tests.integration.conftest import make_workspace
from tests.unit.test_prepare_train import make_manifest

pytestmark = pytest.mark.timeout(300)
EPOCHS = 60  # many short epochs, so that the kill lands between the first and the last


def repro_train(ws, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--single-item", "train"],
        cwd=ws, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def test_killed_training_resumes_from_the_last_checkpoint(tmp_path):
    ws = make_workspace(tmp_path / "ws", {"train": {"epochs": EPOCHS, "batch_size": 16, "patience": EPOCHS, "num_threads": 1, "model": {"width": 4}}})
    prepare_dataset(make_manifest(tmp_path / "ingest", patients=24, per_patient=2), default_params().prepare, ws / "data" / "prepare")
    checkpoint = ws / "data" / "train_state" / CHECKPOINT_FILE

    first = repro_train(ws, start_new_session=True)
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # dvc and the training process it started
    first.wait()
    assert checkpoint.exists(), first.stdout.read()
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= killed_at < EPOCHS

    second = repro_train(ws)
    out, _ = second.communicate(timeout=240)
    assert second.returncode == 0, out
    assert f"resuming after epoch {killed_at}" in out
    assert f"epoch {killed_at + 1}/{EPOCHS}:" in out and "epoch 1/" not in out
    training = json.loads((ws / "data" / "train" / TRAINING_FILE).read_text())
    assert training["resumed_after_epoch"] == killed_at and training["epochs_run"] == EPOCHS
