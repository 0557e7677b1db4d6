"""Data-parallel training under torchrun (DistributedDataParallel), for components.stages.train.

`torchrun` starts N copies of `python -m components.stages.train` with the rendezvous in their
environment; `join_process_group` makes each a `Replica` (NCCL on a GPU, gloo on the CPU).
Every replica draws the same global batch (same seeds) and trains on its slice of it; DDP
averages the gradients. With the loss normalised over the global batch (`global_loss`), a step
equals one process's step on the whole batch except for BatchNorm's batch statistics (per slice:
SyncBatchNorm is GPU-only) and floating-point summation order, so metrics agree with a
one-process run within a small tolerance, not bit for bit. Only rank 0 writes files.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Replica:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This replica's slice of a global batch (every world_size-th row from its rank)."""
        return batch[self.rank :: self.world_size]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model under DistributedDataParallel when there are several replicas."""
        if not self.distributed:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)

    def agree(self, flag: bool) -> bool:
        """Rank 0's value of `flag` on every replica (e.g. stopping on a time limit that each clock sees differently)."""
        return bool(self.agree_value(int(flag)))

    def agree_value(self, value: int) -> int:
        """Rank 0's `value` on every replica (e.g. epochs planned from each one's own clock)."""
        if not self.distributed:
            return value
        shared = torch.tensor([value])
        dist.broadcast(shared, src=0)
        return int(shared.item())


SINGLE = Replica()


def global_loss(criterion_sum: nn.Module, logits: torch.Tensor, labels: torch.Tensor, global_weight: torch.Tensor, replica: Replica) -> torch.Tensor:
    """This slice's share of the global batch's weighted-mean loss, scaled so that DDP's gradient
    averaging yields the gradient of that global mean.

    Args:
        criterion_sum: the loss with `reduction="sum"` (and the class weights).
        global_weight: the sum of the class weights of the whole global batch's labels.
    """
    return criterion_sum(logits, labels) * replica.world_size / global_weight


def join_process_group(device_type: str) -> Replica:
    """This process's Replica: joins torchrun's process group when torchrun started it, else SINGLE."""
    if not dist.is_torchelastic_launched():
        return SINGLE
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = rank % torch.cuda.device_count() if device_type == "cuda" else 0
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return Replica(rank, world, local)


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def under_torchrun(processes: int, module: str, args: list[str]) -> int:
    """Run `python -m module args` as `processes` DDP processes on this node (torchrun --standalone); returns the exit code."""
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", module, *args])
