"""How a stored model turns inputs into class probabilities: the one path of evaluate and the service.

A model is one network or a seed ensemble (`train.ensemble`); its probabilities are the mean of the
softmax over every member and every test-time view (the input and its flips, `evaluate.tta_flip_axes`),
then, with `evaluate.prior_correction`, corrected from the class prior the loss was trained under to
the training data's own (logit adjustment, Menon et al. 2021, "Long-tail learning via logit
adjustment"): a network trained class-balanced (weighted loss or balanced sampling) estimates
p(y|x) under a uniform prior, so its arg-max favours rare classes; adding log(data prior / trained
prior) to its log-probabilities makes the arg-max that of the data's prior. With one network, no
flips and no correction, the predictor is the bare network: one forward pass, as before.

With a `temperature` (`evaluate.calibrate_prediction`, fitted on validation), the mean softmax's
log-probabilities are divided by it before the correction: logit adjustment assumes calibrated
probabilities, and a network trained with label smoothing or mixup is under-confident, so the
same log-prior shift would move its arg-max too far.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class frequencies of `labels`; a class absent from them counts as one image (a prior of 0
    would make its log-probability -inf)."""
    counts = np.maximum(np.bincount(labels, minlength=num_classes), 1).astype(np.float64)
    return counts / counts.sum()


def trained_prior(prior: np.ndarray, loss_weights: np.ndarray) -> np.ndarray:
    """The class prior a loss weighted per class by `loss_weights` (or a sampler drawing each image with
    its class's weight) trains under: `prior * weights`, normalised. Inverse-frequency weights give
    the uniform prior; weights of 1 give `prior` itself."""
    effective = prior * loss_weights
    return effective / effective.sum()


def prior_adjustment(data_prior: Sequence[float], trained: Sequence[float]) -> np.ndarray:
    """log(data prior / trained prior): what logit adjustment adds to a network's log-probabilities.
    Zero where the network trained under the data's own prior (no class balancing)."""
    return np.log(np.asarray(data_prior, np.float64)) - np.log(np.asarray(trained, np.float64))


def correct_probs(probs: np.ndarray, adjustment: np.ndarray) -> np.ndarray:
    """softmax(log(probs) + adjustment) row by row: the probabilities `Predictor` answers, from
    uncorrected ones (`-adjustment` undoes it)."""
    logits = np.log(np.clip(probs, 1e-30, None)) + adjustment
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def flip_views(flip_axes: Sequence[int], spatial_dims: int) -> list[tuple[int, ...]]:
    """The tensor dimensions flipped in each test-time view: every combination of `flip_axes` (spatial
    axes, negative from the last, as `train.augment.flip_axes`), the unflipped input first."""
    dims = sorted({2 + axis % spatial_dims for axis in flip_axes})
    for axis in flip_axes:
        if not -spatial_dims <= axis < spatial_dims:
            raise ValueError(f"flip axis {axis} is outside the input's {spatial_dims} spatial axes")
    return [combo for r in range(len(dims) + 1) for combo in itertools.combinations(dims, r)]


class Predictor(nn.Module):
    """Members x test-time views -> mean softmax -> / temperature -> optional prior correction.

    `forward` returns log-probabilities: valid logits whose softmax is the predictor's probabilities,
    so everything that runs a network (`components.ml.runtime.predict_probs`, the service's batch)
    runs a predictor unchanged. Each member runs once per batch, on all views stacked.
    """

    def __init__(self, members: Sequence[nn.Module], views: Sequence[tuple[int, ...]], adjustment: np.ndarray | None,
                 temperature: float = 1.0):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.views = list(views) or [()]
        self.temperature = temperature
        self.adjustment: torch.Tensor | None
        self.register_buffer("adjustment", None if adjustment is None else torch.as_tensor(adjustment, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        stacked = torch.cat([x.flip(dims) if dims else x for dims in self.views]) if len(self.views) > 1 else x
        total = None
        for member in self.members:
            probs = torch.softmax(member(stacked).float(), dim=1).view(len(self.views), n, -1).sum(dim=0)
            total = probs if total is None else total + probs
        assert total is not None
        log_probs = torch.log((total / (len(self.members) * len(self.views))).clamp_min(1e-30)) / self.temperature
        return log_probs if self.adjustment is None else log_probs + self.adjustment


def build_predictor(
    members: Sequence[nn.Module], spatial_dims: int, flip_axes: Sequence[int] = (), adjustment: np.ndarray | None = None,
    temperature: float = 1.0,
) -> nn.Module:
    """The module whose softmax is the model's probabilities: the bare network when there is one member,
    no flip, no (or a zero) adjustment and a temperature of 1, else a `Predictor`. In eval mode."""
    if adjustment is not None and not np.any(adjustment):
        adjustment = None
    if len(members) == 1 and not flip_axes and adjustment is None and temperature == 1.0:
        return members[0].eval()
    return Predictor(members, flip_views(flip_axes, spatial_dims), adjustment, temperature).eval()
