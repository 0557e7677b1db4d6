"""Typed, frozen views of `params.yaml`, one model per stage section.

The CLI or flow reads `params.yaml` once (`load_params`) and passes these down; components
never read config files or the environment themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CohortConfig(_Section):
    """The embedded synthetic CT cohort (the default dataset)."""

    patients: int = 60
    images_per_patient: int = 4
    image_size: int = 64
    positive_fraction: float = 0.5
    seed: int = 7


class IngestConfig(_Section):
    # Column of labels.csv that names each image's file; another key (e.g. a SOP Instance UID) can be named.
    key_column: str = "path"
    # Folders of PNG/JPEG with many images per patient can encode the patient in the file name prefix.
    patient_from_filename_prefix: bool = False


class ValidateConfig(_Section):
    min_rows: int = 10
    max_rows: int = 2_000_000
    # Intensity range the stored pixels must lie in (HU for CT, 0-255 for 8-bit images).
    intensity_min: float = -2048.0
    intensity_max: float = 65535.0
    min_size: int = 8
    max_size: int = 4096
    min_class_fraction: float = 0.01


class PrepareConfig(_Section):
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 13
    # Spatial size fed to the network; 0 keeps the data's own size (capped by max_size).
    image_size: int = 0
    max_size: int = 64
    # CT window in Hounsfield units used when the data is CT; other data is scaled by its dtype's range.
    window_level: float = 40.0
    window_width: float = 400.0


class ModelConfig(_Section):
    # auto: a 2D ResNet for images, a 3D ResNet for volumes.
    family: Literal["auto", "resnet", "densenet", "efficientnet", "resnet3d", "cnn_rnn"] = "auto"
    width: int = 32  # channels of the first block
    dropout: float = 0.1
    rnn_hidden: int = 64


class TrainConfig(_Section):
    model: ModelConfig = ModelConfig()
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
    num_threads: int = 2
    class_weighting: bool = True
    augment: bool = True
    max_minutes: float = 30.0


class EvaluateConfig(_Section):
    bootstrap_samples: int = 500
    operating_point: Literal["youden", "sensitivity"] = "youden"
    target_sensitivity: float = 0.9
    seed: int = 0


class Bound(_Section):
    lower: float | None = None
    upper: float | None = None


class ChangeThreshold(_Section):
    """Allowed change against the production model; `direction` says which way is better."""

    direction: Literal["higher", "lower"] = "higher"
    absolute: float | None = None
    relative: float | None = None


class GatePolicy(_Section):
    values: dict[str, Bound] = Field(default_factory=dict)
    changes: dict[str, ChangeThreshold] = Field(default_factory=dict)
    subgroup_floors: dict[str, float] = Field(default_factory=dict)


class GateConfig(_Section):
    default: GatePolicy = GatePolicy()
    models: dict[str, GatePolicy] = Field(default_factory=dict)

    def policy_for(self, model_name: str) -> GatePolicy:
        return self.models.get(model_name, self.default)


class PackageConfig(_Section):
    # Empty: derived from the dataset source (e.g. "pneumoniamnist", "ct-lesion" for the default).
    model_name: str = ""
    max_batch_size: int = 64
    # BentoML's adaptive batching latency budget: a request it expects to wait longer is refused (503).
    max_latency_ms: int = 500
    # Intra-op threads of each serving worker (0: PyTorch's default, all cores).
    torch_threads: int = 1


class ServeConfig(_Section):
    port: int = 3000
    max_upload_bytes: int = 20_000_000
    # Images accepted in one /predict_batch request (the body limit above applies as well).
    max_batch_images: int = 256
    golden_set_size: int = 16
    probability_tolerance: float = 1e-4


class Params(_Section):
    cohort: CohortConfig = CohortConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    package: PackageConfig = PackageConfig()
    serve: ServeConfig = ServeConfig()


def load_params(path: Path) -> Params:
    """Read and check `params.yaml`; unknown keys are an error naming the file."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return Params.model_validate(raw)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: params file not found") from None
    except Exception as exc:  # pydantic and yaml errors both deserve the file name
        raise ValueError(f"{path}: invalid params: {exc}") from exc
