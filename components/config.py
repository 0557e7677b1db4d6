"""Typed, frozen views of `params.yaml`, one model per stage section.

The CLI or flow reads `params.yaml` once (`load_params`) and passes these down; components
never read config files or the environment themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator


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
    # Class order (index 1 is the positive class of a binary task); labels outside it are reported and
    # skipped. Empty: numeric names by value, else a "normal"-like name first, then alphabetical.
    class_names: tuple[str, ...] = ()
    # Decoding processes (0: every core this process may use; 1: decode in this process).
    workers: int = 0
    # Images per shard file (images/<NNNNN>.npz), which is also one unit of a decoding process's work.
    shard_size: int = 256
    # Where medmnist:<name> is fetched from when <data root>/<name>.npz is absent ({name} is replaced);
    # empty: never download. The timeout bounds each network operation, so offline runs fail fast.
    medmnist_url: str = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"
    download_timeout_s: float = 10.0


Severity = Literal["blocking", "warning"]

# Every check of components/stages/validate.py, and whether its failure stops the run (blocking) or is only
# reported (warning). params.yaml's validate.severity overrides single entries.
DEFAULT_SEVERITY: dict[str, Severity] = {
    "schema": "blocking", "not_null": "blocking", "unique_image_ids": "blocking", "row_count": "blocking",
    "label_set": "blocking", "class_balance": "blocking", "splits": "blocking",
    "patient_leakage": "blocking", "duplicates_across_splits": "warning", "duplicate_images": "warning",
    "image_kind": "blocking", "image_size": "blocking", "dtype": "blocking", "spacing": "warning",
    "intensity_range": "blocking", "constant_images": "blocking", "modality": "blocking",
    "photometric": "blocking",
}


class ValidateConfig(_Section):
    min_rows: int = 10
    max_rows: int = 2_000_000
    min_size: int = 8  # height, width (and depth of volumes) in pixels
    max_size: int = 4096
    # Class balance: each class's share of all images must lie in [min, max].
    min_class_fraction: float = 0.01
    max_class_fraction: float = 0.99
    dtypes: tuple[str, ...] = ("uint8", "uint16", "int16", "int32", "float32")
    # Stored intensity range per modality (the manifest's `modality`; `default` for the rest and for
    # sources without one): Hounsfield units for CT, 0-255 for 8-bit images.
    intensity: dict[str, Bound] = Field(default_factory=lambda: {
        "CT": Bound(lower=-3100.0, upper=4100.0), "default": Bound(lower=-2048.0, upper=65535.0)})
    spacing_mm: Bound = Field(default_factory=lambda: Bound(lower=0.01, upper=20.0))
    modalities: tuple[str, ...] = ("CT", "MR", "CR", "DX", "MG", "US", "PT", "NM", "XA", "RF", "OT", "SC")
    photometric: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")
    severity: dict[str, Severity] = Field(default_factory=lambda: dict(DEFAULT_SEVERITY))
    # The report: thumbnails and histogram samples per class, files listed per failed check.
    thumbnails_per_class: int = 8
    histogram_images_per_class: int = 64
    max_listed_files: int = 50

    @field_validator("severity")
    @classmethod
    def _known_checks(cls, value: dict[str, Severity]) -> dict[str, Severity]:
        unknown = sorted(set(value) - set(DEFAULT_SEVERITY))
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; known: {sorted(DEFAULT_SEVERITY)}")
        return {**DEFAULT_SEVERITY, **value}


class DriftConfig(_Section):
    """Differences from the data the production model trained on are always reported. A run whose
    drift exceeds a bound set here is marked in the registry; the bound then either fails validation
    (the default) or, with `require_retraining`, lets the run train on the new data and makes the
    gate refuse any model of that name trained on data older than the drifted dataset (docs/gate.md)."""

    max_class_share_change: float | None = None  # largest absolute change of one class's share of images
    max_intensity_ks: float | None = None  # Kolmogorov-Smirnov distance of the per-image mean intensities
    max_size_change: float | None = None  # largest relative change of the median height, width or depth
    max_site_share_change: float | None = None  # largest absolute change of one site's share of images
    require_retraining: bool = False


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
    width: int = 16  # channels of the first block
    depth: Literal[10, 18, 34] = 10  # ResNet depth (resnet, resnet3d and the cnn_rnn encoder)
    dropout: float = 0.1
    rnn_hidden: int = 64


class AugmentConfig(_Section):
    """Random, label-preserving changes to training images, applied to whole batches at once."""

    enabled: bool = True
    rotate_degrees: float = 15.0  # in-plane (H, W) rotation, uniform in +/- this
    zoom: float = 0.1  # scale factor uniform in [1 - zoom, 1 + zoom]
    translate: float = 0.05  # shift, as a fraction of the image size
    affine_probability: float = 0.8  # share of images given a rotation/zoom/shift
    flip_axes: tuple[int, ...] = (-1,)  # spatial axes (negative: from the last) flipped with probability 0.5
    noise_std: float = 0.02  # Gaussian noise on [0, 1] intensities
    noise_probability: float = 0.2
    contrast: float = 0.1  # intensity scale uniform in [1 - contrast, 1 + contrast] about the image mean


class TrainConfig(_Section):
    model: ModelConfig = ModelConfig()
    # 0: enough epochs for about `steps` optimizer steps, within [min_epochs, max_epochs]: small
    # datasets get more passes, large ones fewer. A number: exactly that many epochs (at most).
    epochs: int = 0
    steps: int = 1000
    min_epochs: int = 10
    max_epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    patience: int = 10  # epochs without a better validation AUC before stopping...
    early_stopping_after: float = 0.5  # ...once this share of the planned epochs has run
    seed: int = 0
    num_threads: int = 0  # 0: every core this process may use
    # Class imbalance: weight the loss by inverse class frequency, or sample batches class-balanced.
    class_balance: Literal["weighted_loss", "sampler", "none"] = "weighted_loss"
    augment: AugmentConfig = AugmentConfig()
    ema_decay: float = 0.0  # > 0: select and save an exponential moving average of the weights
    # Training images over which BatchNorm statistics are recomputed after each epoch (0: all); a few
    # thousand estimate them well, and the pass costs a forward over them every epoch.
    bn_recalibration_images: int = 2048
    max_minutes: float = 30.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bfloat16 autocast, on a GPU only
    compile: bool = True  # torch.compile, on a GPU only


class BaselineConfig(_Section):
    """The classical baseline: radiomics-style features and a scikit-learn classifier."""

    classifier: Literal["gradient_boosting", "logistic_regression", "random_forest"] = "gradient_boosting"
    histogram_bins: int = 16
    grey_levels: int = 16  # grey levels of the co-occurrence (texture) matrices
    seed: int = 0


class EvaluateConfig(_Section):
    bootstrap_samples: int = 500
    operating_point: Literal["youden", "sensitivity"] = "youden"
    target_sensitivity: float = 0.9
    temperature_scaling: bool = True  # fit a temperature on validation; report calibration before/after
    calibration_bins: int = 10
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
    # Where the service runs the network: auto = the GPU when the serving host has one.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Most images per forward pass of the service's batcher, on a CPU and on a GPU.
    max_batch_size: int = 64
    gpu_max_batch_size: int = 256
    # The batcher's latency budget: a request expected to wait longer for the network is refused (503).
    max_latency_ms: int = 2000
    # Intra-op threads of each serving worker (0: PyTorch's default, all cores).
    torch_threads: int = 1
    # Server processes, each with its own copy of the network and its own batcher; 0: one per CPU the
    # server may use where it runs (one event loop per process is the service's limit on a CPU).
    # On a GPU host set 1: one process keeps the GPU busy with large batches.
    api_workers: int = 0


class ServeConfig(_Section):
    port: int = 3000
    max_upload_bytes: int = 20_000_000
    # Images accepted in one /predict_batch request (the body limit above applies as well).
    max_batch_images: int = 256
    golden_set_size: int = 16
    probability_tolerance: float = 1e-4
    # `medgate serve` asks the registry for the production Bento this often (0: only on SIGHUP).
    reload_poll_s: float = 10.0


class ModelCardText(_Section):
    """What a model card says about use: written by people, shown verbatim on every card."""

    intended_use: str = "Research use: to study medgate's gated pipeline; not for clinical decisions."
    intended_users: str = "ML engineers and researchers operating medgate."
    limitations: tuple[str, ...] = ()
    out_of_scope: tuple[str, ...] = ()


class ModelCardConfig(_Section):
    """Intended use and limits per model name (`models.<name>`), else `default`."""

    default: ModelCardText = ModelCardText()
    models: dict[str, ModelCardText] = Field(default_factory=dict)

    def text_for(self, model_name: str) -> ModelCardText:
        return self.models.get(model_name, self.default)


class RetrainConfig(_Section):
    """Retraining that runs unattended: `medgate schedule` and `medgate watch` (flows/retrain.py)."""

    cron: str = ""  # the schedule `medgate schedule` registers when --cron is not given
    watch_interval_s: float = 300.0  # how often a watch hashes the source's content
    lock_wait_s: float = 3600.0  # how long an unattended run waits for a busy workspace before it is refused


class OrchestrationConfig(_Section):
    """Where the flow's work runs (README "Scaling"). Only train_processes can change a result."""

    # sequential: one DVC stage at a time. threads / dask: the independent stages of a wave (train and
    # baseline) at once, in threads or on Dask workers; sweep trials fan out the same way.
    task_runner: Literal["sequential", "threads", "dask"] = "sequential"
    dask_address: str = ""  # a running Dask scheduler (tcp://host:8786); empty: a local cluster
    dask_workers: int = 2  # worker processes of that local cluster
    # > 1: train under torchrun with DistributedDataParallel, this many processes on this node
    # (gloo on CPU, NCCL on GPU). The weights differ slightly from one process's, so it is a train dependency.
    train_processes: int = 1


class Params(_Section):
    cohort: CohortConfig = CohortConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    drift: DriftConfig = DriftConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    baseline: BaselineConfig = BaselineConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    package: PackageConfig = PackageConfig()
    serve: ServeConfig = ServeConfig()
    modelcard: ModelCardConfig = ModelCardConfig()
    retrain: RetrainConfig = RetrainConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()


def load_params(path: Path) -> Params:
    """Read and check `params.yaml`; unknown keys are an error naming the file."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return Params.model_validate(raw)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: params file not found") from None
    except Exception as exc:  # pydantic and yaml errors both deserve the file name
        raise ValueError(f"{path}: invalid params: {exc}") from exc
