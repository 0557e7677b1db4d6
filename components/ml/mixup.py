"""Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"): train on convex
combinations of image pairs and of their labels, a regulariser that also tempers over-confidence.

Each training batch is mixed with a permutation of itself by one weight `lam ~ Beta(alpha, alpha)`;
the loss is `lam * loss(labels) + (1 - lam) * loss(partner labels)`, so a class-weighted loss keeps
its weights. Draws come from the given generator, so a seed (and a restored state) repeats a run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def mix_batch(images: torch.Tensor, labels: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`(lam * images + (1 - lam) * images[perm], labels[perm], lam)`; alpha <= 0: the batch unchanged, lam 1."""
    if alpha <= 0:
        return images, labels, 1.0
    perm = torch.randperm(len(labels), generator=generator)
    # torch's Beta sampler takes no generator: a numpy one seeded from this generator keeps runs repeatable.
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm_dev = perm.to(images.device)
    return images * lam + images[perm_dev] * (1 - lam), labels[perm_dev], lam


def mixed_loss(loss: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, partners: torch.Tensor, lam: float) -> torch.Tensor:
    """`lam * loss(labels) + (1 - lam) * loss(partners)`; lam 1: `loss(labels)` alone."""
    if lam == 1.0:
        return loss(labels)
    return lam * loss(labels) + (1 - lam) * loss(partners)
