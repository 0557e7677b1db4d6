"""Network families, all from MONAI, built by one function from params and the data's shape."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import DenseNet, EfficientNet, ResNet
from torch import nn

from components.config import ModelConfig
from components.data.artifacts import SPEC_FILE, WEIGHTS_FILE, file_sha256
from components.ml.audio import AudioPreprocessing, is_audio
from components.ml.audio_models import FAMILIES_AUDIO, build_audio_model
from components.ml.predictor import build_predictor, prior_adjustment
from components.ml.transforms import Preprocessing

FAMILIES_2D = ("resnet", "densenet", "efficientnet")
FAMILIES_3D = ("resnet3d", "cnn_rnn", "frame_cnn")
# EfficientNet-B0's stages (MONAI's own string for B0), built for the data's image size instead of 224.
_EFFICIENTNET_B0 = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


def resolve_family(cfg: ModelConfig, input_shape: tuple[int, ...], audio: bool = False) -> str:
    """The family to build: the configured one, or for `auto` a ResNet matching the data's dimensions
    (for recordings' spectrograms, `audio`: the audio CNN)."""
    spatial_dims = len(input_shape) - 1
    family = cfg.family
    if audio:
        family = "audio_cnn" if family == "auto" else family
        if family not in FAMILIES_AUDIO:
            raise ValueError(f"model family {family!r} is not for recordings; use one of {', '.join(FAMILIES_AUDIO)}")
        return family
    if family == "auto":
        family = "resnet" if spatial_dims == 2 else "resnet3d"
    if spatial_dims == 2 and family not in FAMILIES_2D:
        raise ValueError(f"model family {family!r} needs 3D input; the data is 2D (input {input_shape})")
    if spatial_dims == 3 and family not in FAMILIES_3D:
        raise ValueError(f"model family {family!r} needs 2D input; the data is 3D (input {input_shape})")
    return family


_RESNET_LAYERS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def _small_resnet(spatial_dims: int, in_channels: int, num_classes: int, width: int, size: int, depth: int = 10) -> ResNet:
    """A ResNet (basic blocks) sized for small inputs: a 3x3 stem that keeps 2D images up to 32 px
    at full resolution (MedMNIST style) and halves larger ones, and volumes above 16 voxels (a 3D
    block costs the cube of its side: on 28^3 volumes the strided stem trains about 10x faster);
    a max-pool only above 64 px (2D) or 32 voxels (3D)."""
    full_resolution, no_pool = (32, 64) if spatial_dims == 2 else (16, 32)
    return ResNet(
        block="basic",
        layers=_RESNET_LAYERS[depth],
        block_inplanes=[width, 2 * width, 4 * width, 8 * width],
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=3,
        conv1_t_stride=1 if size <= full_resolution else 2,
        no_max_pool=size <= no_pool,
        num_classes=num_classes,
    )


class SliceRNN(nn.Module):
    """A 2D CNN encoder applied to every slice (or frame), then a GRU over the sequence.

    Input (B, C, D, H, W): D is the slice or frame axis.
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: ModelConfig, size: int):
        super().__init__()
        width, hidden = cfg.width, cfg.rnn_hidden
        self.encoder = _small_resnet(2, in_channels, 8 * width, width, size, cfg.depth)
        self.rnn = nn.GRU(8 * width, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(2 * hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        feats = self.encoder(x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)).reshape(b, d, -1)
        out, _ = self.rnn(torch.relu(feats))
        return self.head(out.mean(dim=1))


class FrameCNN(nn.Module):
    """The frame-level baseline of clips: a 2D CNN scores every frame alone; the clip's logits are
    the mean of its frames'. It sees no motion, so it is what a model of time must beat.

    Input (B, C, T, H, W).
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: ModelConfig, size: int):
        super().__init__()
        self.frame = _small_resnet(2, in_channels, num_classes, cfg.width, size, cfg.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        return self.frame(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)).reshape(b, t, -1).mean(dim=1)


class Standardized(nn.Module):
    """`net` on each input scaled to zero mean and unit variance over all its values (`input_norm: instance`):
    part of the network, so training, evaluation and the service all apply it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)  # not x.ndim: torch.fx traces this (components.ml.runtime.folded_for_inference)
        std, mean = torch.std_mean(flat, dim=1, keepdim=True)
        return self.net(((flat - mean) / (std + 1e-3)).view_as(x))


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, audio: bool = False) -> nn.Module:
    """The network for inputs of `input_shape` = (C, *spatial) (spectrograms when `audio`), returning
    `num_classes` logits."""
    net = _build_network(cfg, input_shape, num_classes, audio)
    return Standardized(net) if cfg.input_norm == "instance" else net


def _build_network(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, audio: bool) -> nn.Module:
    family = resolve_family(cfg, input_shape, audio)
    in_channels, spatial = input_shape[0], input_shape[1:]
    if family in FAMILIES_AUDIO:
        return build_audio_model(family, in_channels, num_classes, cfg)
    size = max(spatial)
    if family == "resnet":
        return _small_resnet(2, in_channels, num_classes, cfg.width, size, cfg.depth)
    if family == "resnet3d":
        return _small_resnet(3, in_channels, num_classes, cfg.width, size, cfg.depth)
    if family == "densenet":
        return DenseNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            init_features=cfg.width,
            growth_rate=max(cfg.width // 2, 8),
            block_config=(4, 8, 6),
            dropout_prob=cfg.dropout,
        )
    if family == "efficientnet":
        # Randomly initialised: pretrained weights would be downloaded, and medgate never fetches at run time.
        return EfficientNet(
            blocks_args_str=_EFFICIENTNET_B0,
            spatial_dims=2,
            in_channels=in_channels,
            num_classes=num_classes,
            dropout_rate=cfg.dropout,
            image_size=size,
        )
    if family == "frame_cnn":
        return FrameCNN(in_channels, num_classes, cfg, size)
    return SliceRNN(in_channels, num_classes, cfg, size)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a trained network and feed it: stored beside the weights.

    `class_names` is the only source of label order; for two classes, `class_names[1]` is the
    positive class that `operating_threshold` applies to. How inputs become probabilities
    (`components.ml.predictor`): the mean softmax of `members` networks (a seed ensemble) over the
    input and its flips along `tta_flip_axes`, corrected from `trained_prior` (the class prior the
    loss saw: uniform under class balancing) to `class_prior` (the training split's) when
    `prior_correction`, the mean's log-probabilities first divided by `temperature` (1: as they are).
    Train writes the first three; evaluate decides the last three, which packaging stores with the
    model, so the service predicts as evaluate measured.
    """

    model: ModelConfig
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    preprocessing: Preprocessing | AudioPreprocessing
    operating_threshold: float = 0.5
    members: int = 1
    class_prior: tuple[float, ...] = ()
    trained_prior: tuple[float, ...] = ()
    tta_flip_axes: tuple[int, ...] = ()
    prior_correction: bool = False
    temperature: float = 1.0

    @property
    def audio(self) -> bool:
        return isinstance(self.preprocessing, AudioPreprocessing)

    def adjustment(self) -> np.ndarray | None:
        """What prior correction adds to the log-probabilities; None when it is off or the priors are unknown."""
        if not (self.prior_correction and self.class_prior and self.trained_prior):
            return None
        return prior_adjustment(self.class_prior, self.trained_prior)

    def predicting(self, tta_flip_axes: Sequence[int], prior_correction: bool, temperature: float = 1.0) -> ModelSpec:
        """This spec with evaluate's choice of test-time flips, prior correction and temperature."""
        return replace(self, tta_flip_axes=tuple(tta_flip_axes), prior_correction=prior_correction, temperature=temperature)

    def prediction(self) -> dict[str, Any]:
        """The fields evaluate decides (metrics.json's `prediction`, what packaging stores)."""
        return {"tta_flip_axes": list(self.tta_flip_axes), "prior_correction": self.prior_correction, "temperature": self.temperature}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.model_dump(),
            "family": resolve_family(self.model, self.input_shape, self.audio),
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "operating_threshold": self.operating_threshold,
            "members": self.members,
            "class_prior": list(self.class_prior),
            "trained_prior": list(self.trained_prior),
            **self.prediction(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelSpec:
        return cls(
            model=ModelConfig.model_validate({"input_norm": "none", **raw["model"]}),  # stored before input_norm: none
            input_shape=tuple(int(s) for s in raw["input_shape"]),
            class_names=tuple(raw["class_names"]),
            preprocessing=preprocessing_from_dict(raw["preprocessing"]),
            operating_threshold=float(raw.get("operating_threshold", 0.5)),
            members=int(raw.get("members", 1)),
            class_prior=tuple(float(p) for p in raw.get("class_prior", ())),
            trained_prior=tuple(float(p) for p in raw.get("trained_prior", ())),
            tta_flip_axes=tuple(int(a) for a in raw.get("tta_flip_axes", ())),
            prior_correction=bool(raw.get("prior_correction", False)),
            temperature=float(raw.get("temperature", 1.0)),
        )


def preprocessing_from_dict(raw: dict[str, Any]) -> Preprocessing | AudioPreprocessing:
    """A stored preprocessing (dataset.json's, a model spec's): of recordings or of images."""
    return AudioPreprocessing.from_dict(raw) if is_audio(raw) else Preprocessing.from_dict(raw)


def save_model(model: nn.Module | Sequence[nn.Module], spec: ModelSpec, out_dir: Path) -> Path:
    """Write weights and spec into `out_dir`; returns the weights path.

    The weights are a plain state dict: of the network, or for an ensemble of `nn.ModuleList(members)`
    (keys `<member>.<parameter>`), one file holding every member.
    """
    members = [model] if isinstance(model, nn.Module) else list(model)
    if len(members) != spec.members:
        raise ValueError(f"{len(members)} networks for a spec of {spec.members} members")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    torch.save((members[0] if len(members) == 1 else nn.ModuleList(members)).state_dict(), weights)
    (out_dir / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2))
    return weights


def load_networks(model_dir: Path, expected_sha256: str | None = None) -> tuple[list[nn.Module], ModelSpec]:
    """The networks saved by `save_model` (one, or an ensemble's members), in eval mode, and their spec.

    Raises ValueError if `expected_sha256` is given and the weights file does not match it.
    Weights load with `weights_only=True`: no arbitrary pickle is ever executed.
    """
    weights = model_dir / WEIGHTS_FILE
    if expected_sha256 is not None and (actual := file_sha256(weights)) != expected_sha256:
        raise ValueError(f"{weights}: sha256 {actual} does not match the registered {expected_sha256}")
    spec = ModelSpec.from_dict(json.loads((model_dir / SPEC_FILE).read_text()))
    members = [build_model(spec.model, spec.input_shape, len(spec.class_names), spec.audio) for _ in range(spec.members)]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    (members[0] if len(members) == 1 else nn.ModuleList(members)).load_state_dict(state)
    return [m.eval() for m in members], spec


def spec_predictor(members: Sequence[nn.Module], spec: ModelSpec) -> nn.Module:
    """The module whose softmax is the probabilities `spec` says its networks give (components.ml.predictor)."""
    return build_predictor(members, len(spec.input_shape) - 1, spec.tta_flip_axes, spec.adjustment(), spec.temperature)


def load_model(model_dir: Path, expected_sha256: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """The model saved by `save_model` as one module, in eval mode, whose softmax is its probabilities
    as its spec says (members, test-time flips, temperature, prior correction); see `load_networks` for the checks."""
    members, spec = load_networks(model_dir, expected_sha256)
    return spec_predictor(members, spec), spec
