"""How a stored model makes probabilities: prior correction, test-time flips, ensembles (components.ml.predictor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from components.config import default_params
from components.ml.metrics import apply_temperature, fit_temperature
from components.ml.models import ModelSpec, build_model, load_model, load_networks, save_model
from components.ml.predictor import (
    Predictor,
    build_predictor,
    class_prior,
    correct_probs,
    flip_views,
    prior_adjustment,
    trained_prior,
)
from components.ml.transforms import Preprocessing
from components.stages.train import class_weights


def test_prior_correction_on_numbers():
    prior = np.array([0.8, 0.2])
    adjustment = prior_adjustment(prior, [0.5, 0.5])
    np.testing.assert_allclose(adjustment, np.log([1.6, 0.4]))
    # p * prior / trained prior, renormalised: [0.4 * 1.6, 0.6 * 0.4] = [0.64, 0.24] -> [8/11, 3/11]
    corrected = correct_probs(np.array([[0.4, 0.6]]), adjustment)
    np.testing.assert_allclose(corrected, [[8 / 11, 3 / 11]])
    np.testing.assert_allclose(correct_probs(corrected, -adjustment), [[0.4, 0.6]])
    # Trained under the data's own prior: nothing to correct.
    assert not np.any(prior_adjustment(prior, prior))


def test_balanced_training_trains_under_a_uniform_prior():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    prior = class_prior(labels, 4)  # class 3 absent: counted once, never a zero prior
    assert prior[3] > 0 and prior.sum() == pytest.approx(1)
    np.testing.assert_allclose(trained_prior(prior, class_weights(labels, 4)), [0.25] * 4)
    np.testing.assert_allclose(trained_prior(prior, np.ones(4)), prior)


def test_flip_views_cover_every_combination():
    assert flip_views([-1], 2) == [(), (3,)]
    assert flip_views([-1, -2], 2) == [(), (2,), (3,), (2, 3)]
    assert flip_views([0, -1], 3) == [(), (2,), (4,), (2, 4)]
    with pytest.raises(ValueError, match="outside"):
        flip_views([2], 2)


def _net(seed: int, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, classes)).eval()


def test_one_network_without_flips_or_correction_is_served_bare():
    net = _net(0)
    assert build_predictor([net], 2) is net
    assert build_predictor([net], 2, adjustment=np.zeros(3)) is net  # trained unbalanced: zero correction
    assert isinstance(build_predictor([net], 2, [-1]), Predictor)


def test_predictor_averages_members_and_flips_then_corrects():
    members = [_net(0), _net(1)]
    x = torch.randn(5, 1, 4, 4)
    adjustment = np.log([0.6, 0.3, 0.1]) - np.log([1 / 3] * 3)
    calls = []
    for m in members:
        m.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    with torch.no_grad():
        probs = torch.softmax(build_predictor(members, 2, [-1], adjustment)(x), dim=1).numpy()
        assert calls == [10, 10], "each member runs once per batch, on the input and its flip stacked"
        raw = np.mean([torch.softmax(m(v), dim=1).numpy() for m in members for v in (x, x.flip(3))], axis=0)
    np.testing.assert_allclose(probs, correct_probs(raw, adjustment), atol=1e-6)


def test_temperature_divides_the_log_probabilities_before_the_correction():
    net, x = _net(0), torch.randn(5, 1, 4, 4)
    adjustment = np.log([0.6, 0.3, 0.1]) - np.log([1 / 3] * 3)
    assert isinstance(build_predictor([net], 2, temperature=0.5), Predictor)
    with torch.no_grad():
        raw = torch.softmax(net(x), dim=1).numpy()
        probs = torch.softmax(build_predictor([net], 2, adjustment=adjustment, temperature=0.5)(x), dim=1).numpy()
    np.testing.assert_allclose(probs, correct_probs(apply_temperature(raw, 0.5), adjustment), atol=1e-6)
    np.testing.assert_allclose(probs, apply_temperature(raw, 0.5, adjustment), atol=1e-6)


def test_calibration_before_the_correction_finds_the_temperature_that_made_the_scores():
    """Scores made under-confident by a known factor, then corrected to a 70/30 prior: the fitted
    temperature undoes the factor, and the corrected arg-max is that of the calibrated scores."""
    rng = np.random.default_rng(0)
    labels = (rng.random(4000) < 0.3).astype(int)
    balanced_logit = rng.normal(0, 1, len(labels)) + np.where(labels == 1, 1.5, -1.5)
    adjustment = prior_adjustment([0.7, 0.3], [0.5, 0.5])
    # The true p(y|x) under the data's prior is softmax(balanced logits + adjustment); the network's are halved.
    under = np.stack([np.zeros_like(balanced_logit), balanced_logit / 2], axis=1)
    probs = np.exp(under) / np.exp(under).sum(1, keepdims=True)
    truth = apply_temperature(probs, 0.5, adjustment)
    labels = (rng.random(len(labels)) < truth[:, 1]).astype(int)
    assert fit_temperature(labels, probs, adjustment) == pytest.approx(0.5, rel=0.15)
    assert fit_temperature(labels, correct_probs(probs, adjustment)) > 0.55  # fitted after the correction: another scale


def test_prior_correction_recovers_accuracy_of_a_class_weighted_model():
    """A model fitted with an inverse-frequency weighted loss on imbalanced classes favours the rare
    ones at the arg-max; corrected to the training prior it is more accurate."""
    rng = np.random.default_rng(0)
    counts, means = [700, 200, 100], np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.repeat(np.arange(3), counts)
    x = torch.tensor(means[labels] + rng.normal(0, 0.8, (len(labels), 2)), dtype=torch.float32)
    y = torch.from_numpy(labels)
    weights = class_weights(labels, 3)
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    loss = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    for _ in range(300):
        optimizer.zero_grad()
        loss(model(x), y).backward()
        optimizer.step()
    prior = class_prior(labels, 3)
    adjustment = prior_adjustment(prior, trained_prior(prior, weights))
    with torch.no_grad():
        raw = torch.softmax(model(x), dim=1).numpy()
        corrected = torch.softmax(build_predictor([model], 1, adjustment=adjustment)(x), dim=1).numpy()
    raw_accuracy, corrected_accuracy = (float((p.argmax(1) == labels).mean()) for p in (raw, corrected))
    assert raw_accuracy + 0.05 < corrected_accuracy, (raw_accuracy, corrected_accuracy)
    assert (raw.argmax(1) != 0).mean() > (corrected.argmax(1) != 0).mean()  # fewer rare-class answers


def _spec(members: int = 1, **fields) -> ModelSpec:
    return ModelSpec(
        model=default_params(train={"model": {"width": 4}}).train.model,
        input_shape=(1, 16, 16),
        class_names=("a", "b", "c"),
        preprocessing=Preprocessing(spatial_size=(16, 16), channels=1, lower=0.0, upper=255.0),
        members=members,
        **fields,
    )


def test_ensemble_is_one_weights_file_and_one_model(tmp_path):
    spec = _spec(2, class_prior=(0.6, 0.3, 0.1), trained_prior=(1 / 3, 1 / 3, 1 / 3), tta_flip_axes=(-1,), prior_correction=True,
                 temperature=0.8)
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(build_model(spec.model, spec.input_shape, 3).eval())
    save_model(nets, spec, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]
    loaded, loaded_spec = load_networks(tmp_path)
    assert loaded_spec == spec
    for original, back in zip(nets, loaded):
        assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), back.state_dict().values()))
    model, _ = load_model(tmp_path)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        raw = np.mean([torch.softmax(n(v), dim=1).numpy() for n in nets for v in (x, x.flip(3))], axis=0)
        np.testing.assert_allclose(torch.softmax(model(x), dim=1).numpy(), apply_temperature(raw, 0.8, spec.adjustment()), atol=1e-6)
    with pytest.raises(ValueError, match="members"):
        save_model(nets, _spec(1), tmp_path)


def test_spec_of_a_model_saved_before_these_fields_predicts_as_before():
    raw = _spec().to_dict()
    for key in ("members", "class_prior", "trained_prior", "tta_flip_axes", "prior_correction", "temperature"):
        raw.pop(key)
    spec = ModelSpec.from_dict(raw)
    assert spec.members == 1 and spec.adjustment() is None and spec.tta_flip_axes == () and spec.temperature == 1.0
    # Correction asked for but no priors stored: nothing to correct with.
    assert spec.predicting((), True).adjustment() is None
