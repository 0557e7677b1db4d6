"""Training's batch pipeline and time budget: batches made ahead on a thread are the batches a loop
without prefetching makes, and a `max_minutes` too short for the configured epochs re-plans them
after the first so that the one-cycle schedule still ends at its minimum."""

import json
import threading

import pytest
import torch

import components.stages.train as train_module
from components.data.artifacts import CHECKPOINT_FILE, HISTORY_FILE, TRAINING_FILE
from components.ml.prefetch import prefetched
from components.ml.schedule import plan_within_budget
from components.stages.train import train_model
from tests.unit.test_prepare_train import TINY, Killed, _stop_after, _weights, prepare_tiny

MIN_LR = TINY.learning_rate / 25 / 1e4  # OneCycleLR's defaults: div_factor 25, final_div_factor 1e4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_tiny(tmp_path_factory.mktemp("prepared"), patients=32)


def _random_batches(depth):
    generator = torch.Generator().manual_seed(3)
    return [batch for batch, _ in prefetched(lambda n: torch.rand(n, generator=generator), [2, 5, 1, 4, 3], depth)]


def test_prefetched_batches_come_in_order_from_the_same_random_draws():
    plain = _random_batches(0)
    assert [len(b) for b in plain] == [2, 5, 1, 4, 3]
    for depth in (1, 2, 8):
        assert all(torch.equal(a, b) for a, b in zip(plain, _random_batches(depth)))


def test_prefetch_runs_on_another_thread_and_reports_waiting():
    threads = set()

    def make(i):
        threads.add(threading.get_ident())
        return i

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the worker makes batches with 1
    try:
        out = list(prefetched(make, range(6), 2))
        later = []  # a thread started afterwards (a flow's next task) gets the process's count back
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert torch.get_num_threads() == 2 and later == [2]
    finally:
        torch.set_num_threads(before)
    assert [b for b, _ in out] == list(range(6)) and all(w >= 0 for _, w in out)
    assert threading.get_ident() not in threads and len(threads) == 1


def test_prefetch_passes_errors_on_and_stops_its_work_when_the_caller_stops():
    made = []

    def make(i):
        if i == 3:
            raise ValueError("bad batch")
        made.append(i)
        return i

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetched(make, range(10), 2))
    assert made == [0, 1, 2]  # nothing made after the failure
    made.clear()
    batches = prefetched(make, range(100, 200), 2)
    next(batches)
    batches.close()  # the training step raised: the generator is closed, its pool shut down
    assert made == list(range(100, 100 + len(made))) and 1 <= len(made) <= 3  # at most `depth` ahead
    assert len(made) == len(set(made)) and made == sorted(made)


def test_training_with_and_without_prefetch_gives_the_same_weights(prepared, tmp_path):
    for depth in (0, 3):
        train_model(prepared, TINY.model_copy(update={"epochs": 2, "prefetch_batches": depth}), tmp_path / str(depth))
    plain, ahead = _weights(tmp_path / "0"), _weights(tmp_path / "3")
    assert all(torch.equal(plain[k], ahead[k]) for k in plain)


@pytest.mark.parametrize(("planned", "epoch_seconds", "seconds_left", "expected"), [
    (10, 60.0, 3600.0, 10),  # fits: the configured plan
    (30, 60.0, 600.0, 11),  # the first epoch and the 10 more that fit
    (30, 60.0, 59.0, 1),  # none more fits
    (30, 60.0, -5.0, 1),  # already past the budget: the first epoch is all
])
def test_budget_plans_the_epochs_that_fit(planned, epoch_seconds, seconds_left, expected):
    assert plan_within_budget(planned, 1, epoch_seconds, seconds_left) == expected


def test_tiny_budget_plans_one_epoch_and_ends_the_schedule(prepared, tmp_path):
    train_model(prepared, TINY.model_copy(update={"max_minutes": 1e-6}), tmp_path / "train")
    training = json.loads((tmp_path / "train" / TRAINING_FILE).read_text())
    assert training["epochs_configured"] == 4 and training["epochs_planned"] == training["epochs_run"] == 1
    assert training["plan"].startswith("budget: 1 of 4 epochs") and training["stopped"] == "epochs"
    final = torch.load(tmp_path / "train" / CHECKPOINT_FILE, weights_only=True)
    assert final["scheduler"]["last_epoch"] == final["scheduler"]["total_steps"] - 1  # at its last step
    assert final["scheduler"]["_last_lr"][0] == pytest.approx(MIN_LR, rel=0.05)


def _plan(epochs):
    return lambda planned, done, epoch_seconds, seconds_left: epochs


def test_replanned_schedule_ends_at_its_minimum_and_resumes_exactly(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "plan_within_budget", _plan(3))  # a budget that fits 3 of 5 epochs
    cfg = TINY.model_copy(update={"epochs": 5})
    train_model(prepared, cfg, tmp_path / "full", tmp_path / "full-state")
    history = json.loads((tmp_path / "full" / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["learning_rate"] > 100 * MIN_LR and history[-1]["learning_rate"] == pytest.approx(MIN_LR, rel=0.05)

    with pytest.raises(Killed):
        train_model(prepared, cfg, tmp_path / "train", tmp_path / "state", on_epoch=_stop_after(2))
    checkpoint = torch.load(tmp_path / "state" / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["epochs_planned"] == 3 and checkpoint["plan"].startswith("budget: 3 of 5")
    monkeypatch.setattr(train_module, "plan_within_budget", _plan(5))  # a resumed run keeps the recorded plan
    train_model(prepared, cfg, tmp_path / "train", tmp_path / "state")
    training = json.loads((tmp_path / "train" / TRAINING_FILE).read_text())
    assert (training["epochs_planned"], training["epochs_run"], training["resumed_after_epoch"]) == (3, 3, 2)
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "train")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
