"""Mixup mixes a batch with a permutation of itself by one weight and weighs the two losses by it;
off (alpha 0) it changes nothing and draws nothing; on, training still learns and repeats by seed."""

import json

import pytest
import torch
from pydantic import ValidationError

from components.config import default_params
from components.data.artifacts import HISTORY_FILE
from components.ml.mixup import mix_batch, mixed_loss
from components.stages.train import train_model

from tests.unit.test_prepare_train import TINY, prepared  # noqa: F401 - the fixture


def test_mixup_off_leaves_the_batch_and_the_generator_alone():
    images, labels, gen = torch.rand(8, 1, 4, 4), torch.arange(8) % 2, torch.Generator().manual_seed(0)
    state = gen.get_state()
    mixed, partners, lam = mix_batch(images, labels, 0.0, gen)
    assert mixed is images and partners is labels and lam == 1.0
    assert torch.equal(gen.get_state(), state)


def test_mixup_mixes_pairs_by_one_weight_and_repeats_by_seed():
    images, labels = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1), torch.tensor([0, 1, 0, 1, 1, 0])
    mixed, partners, lam = mix_batch(images, labels, 0.4, torch.Generator().manual_seed(3))
    assert 0.0 <= lam <= 1.0
    # Each mixed image is lam * its own + (1 - lam) * its partner's, the partner's label returned.
    partner_values = (mixed.flatten() - lam * images.flatten()) / (1 - lam)
    perm = partner_values.round().long()
    assert sorted(perm.tolist()) == list(range(6)) and torch.equal(partners, labels[perm])
    again = mix_batch(images, labels, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], mixed) and again[2] == lam


def test_mixed_loss_weighs_the_two_label_sets():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))
    a, b = torch.tensor([0, 1]), torch.tensor([1, 1])

    def loss(y):
        return criterion(logits, y)

    assert mixed_loss(loss, a, b, 0.3) == pytest.approx(0.3 * loss(a) + 0.7 * loss(b))
    assert mixed_loss(loss, a, b, 1.0) == loss(a)


def test_mixup_and_label_smoothing_are_validated():
    assert default_params().train.mixup_alpha == 0.0  # off by default
    for bad in ({"mixup_alpha": -0.1}, {"label_smoothing": 1.0}):
        with pytest.raises(ValidationError):
            default_params(train=bad)


def test_training_with_mixup_learns_and_repeats(prepared, tmp_path):  # noqa: F811 - the fixture
    cfg = TINY.model_copy(update={"mixup_alpha": 0.4, "epochs": 6})
    trained = train_model(prepared, cfg, tmp_path / "a")
    train_model(prepared, cfg, tmp_path / "b")
    assert trained.best_val_auc > 0.7
    histories = [json.loads((tmp_path / d / HISTORY_FILE).read_text()) for d in ("a", "b")]
    assert [h["train_loss"] for h in histories[0]] == [h["train_loss"] for h in histories[1]]
