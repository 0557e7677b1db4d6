"""The learning-rate schedule of training and its time budget."""

from __future__ import annotations

import math

import torch


def plan_within_budget(planned: int, done: int, epoch_seconds: float, seconds_left: float) -> int:
    """The epochs to run in all: `planned`, or as many as fit when the `done` epochs are followed by
    more of `epoch_seconds` each in `seconds_left` (never fewer than `done`)."""
    fit = done + max(0, math.floor(seconds_left / max(epoch_seconds, 1e-9)))
    return max(done, min(planned, fit))


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, steps_done: int = 0) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule over `total_steps`, positioned after `steps_done` of them.

    A re-planned schedule keeps its step count and continues along the new, shorter curve; one
    planned to end where it stands rests on its last step. Training steps the schedule only while
    steps remain, so after the last one its rate is that step's, the schedule's minimum.
    """
    total_steps = max(1, total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, last_epoch=min(steps_done, total_steps - 1) - 1)
