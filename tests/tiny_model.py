"""The model the service tests serve: an untrained width-4 network on 16x16 grey images (0-255)."""

from __future__ import annotations

from pathlib import Path

import torch

from components.config import default_params
from components.ml.models import ModelSpec, build_model, save_model
from components.ml.transforms import Preprocessing


def save_tiny_model(out_dir: Path, class_names: tuple[str, ...], seed: int = 0) -> Path:
    """The network and its spec saved in `out_dir` (weights drawn with `seed`); returns `out_dir`."""
    torch.manual_seed(seed)
    spec = ModelSpec(
        model=default_params(train={"model": {"width": 4}}).train.model,
        input_shape=(1, 16, 16),
        class_names=class_names,
        preprocessing=Preprocessing(spatial_size=(16, 16), channels=1, lower=0.0, upper=255.0),
    )
    save_model(build_model(spec.model, spec.input_shape, len(class_names)), spec, out_dir)
    return out_dir
