"""Where and how a network runs: the device a setting asks for, intra-op threads, batched inference."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import torch
from torch import nn


def resolve_device(setting: str, name: str) -> torch.device:
    """The device a `name` setting of "auto", "cpu" or "cuda" asks for; `auto`: the GPU when there is one.

    Raises:
        RuntimeError: "cuda" where no CUDA device is visible.
    """
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{name} is cuda but no CUDA device is available")
    return torch.device("cuda" if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()) else "cpu")


def set_threads(num_threads: int) -> int:
    """Intra-op threads: `num_threads`, or with 0 every core this process may use. Returns the count."""
    count = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(count)
    return count


def keep_freed_memory(trim_threshold_bytes: int = 1 << 30) -> bool:
    """Have glibc's malloc keep freed memory for the next tensor instead of giving it back to the kernel.

    glibc maps every block above its largest mmap threshold (32 MiB) fresh and unmaps it on free, so each
    batch of volumes or clips, and each of their activations and gradients, pays its page faults again: at
    64^3, a bare training loop ran 1.7-1.8x faster with the memory kept, its peak memory 8% higher
    (benchmarks/throughput.py). For the process of a stage that trains or evaluates: the heap keeps up to
    `trim_threshold_bytes` free until the process ends. Returns whether it took (not on a C library
    without glibc's `mallopt`).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, trim_threshold_bytes))


@torch.no_grad()
def predict_probs(model: nn.Module, images: np.ndarray, batch_size: int = 256, device: torch.device | None = None) -> np.ndarray:
    """Softmax class probabilities for prepared images (N, C, *spatial)."""
    model.eval()
    device = device or next(model.parameters()).device
    out = [
        torch.softmax(model(torch.from_numpy(images[i : i + batch_size]).to(device)).float(), dim=1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def folded_for_inference(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, bool]:
    """`model` in eval mode with each BatchNorm that follows a convolution (or linear layer) folded into its
    weights, one pass over the activations fewer per layer, and whether it was folded. The folded module is a
    copy; `model` is returned as it is where torch.fx cannot trace it or the copy's outputs on `example`
    differ from the model's by more than float rounding."""
    from torch.fx.experimental.optimization import fuse

    model.eval()
    try:
        folded = fuse(model)
    except Exception:  # any tracing failure (data-dependent control flow, say): run it unfolded
        return model, False
    with torch.inference_mode():
        same = torch.allclose(folded(example).float(), model(example).float(), rtol=1e-4, atol=1e-4)
    return (folded.eval(), True) if same else (model, False)
