"""The weights training keeps and selects: an exponential moving average of them, and BatchNorm
statistics recomputed exactly before each validation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def bn_calibration_images(images: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """The training images `recalibrate_batchnorm` averages over: all, or a fixed seeded sample of `limit`."""
    if limit <= 0 or len(images) <= limit:
        return images
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
    return images[chosen]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> None:
    """Recompute BatchNorm statistics as exact averages over the (unaugmented) training images.

    On small datasets the weights move fast between the few steps of an epoch, so the running
    averages lag behind them and eval-mode outputs collapse to one class ("precise BN" fixes it).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    for i in range(0, len(images), batch_size):
        model(torch.from_numpy(images[i : i + batch_size]).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


class WeightAverage:
    """Exponential moving average of the weights (and BatchNorm statistics), with a warm-up so
    that the first steps, far from the final weights, fade out quickly."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.steps = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                self.state[key].copy_(value)
