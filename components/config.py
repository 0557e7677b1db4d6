"""Typed, frozen views of `params.yaml`, one model per stage section.

The CLI or flow reads `params.yaml` once (`load_params`) and passes these down; components
never read config files or the environment themselves. The project's `params.yaml` is the one
source of every value: the models here hold types and checks, no defaults (except where a field
is optional by nature: an open side of a `Bound`, a check a `ChangeThreshold` or `GatePolicy`
leaves out). Code and tests that run without a workspace take `default_params()`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

# The project's own params.yaml, beside the package (a workspace's components/ links here).
PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_T = TypeVar("_T", bound=_Section)


class PerModel(_Section, Generic[_T]):
    """A section that a model name can override: `models.<name>`, else `default`."""

    default: _T
    models: dict[str, _T]

    def for_model(self, model_name: str) -> _T:
        return self.models.get(model_name, self.default)


class CineCohortConfig(_Section):
    """The embedded cine cohort (``cohort:cine``, components.demo.cine): beating-ventricle phantoms."""

    patients: int
    clips_per_patient: int
    frames: int  # frames written per clip (ingest samples ingest.video.frames of them)
    size: int  # rows and columns of each written frame
    seed: int


class AudioCohortConfig(_Section):
    """The embedded audio cohorts, cohort:dictation and cohort:tones (components/demo/dictation.py)."""

    speakers: int  # each one the patient_id of its recordings
    phrases_per_speaker: int
    snr_db_low: float  # background noise: signal-to-noise ratio uniform in [low, high] dB
    snr_db_high: float
    seed: int


# What can put an input at risk of burned-in text (components.privacy.burned_in); ingest.accept_burned_in_risk names them.
BURNED_IN_MODALITIES: tuple[str, ...] = ("US", "SC", "XA", "OT")
BURNED_IN_RISKS: tuple[str, ...] = ("PNG", "JPEG", "VIDEO", *BURNED_IN_MODALITIES)


class CohortConfig(_Section):
    """The embedded synthetic CT cohort (the default dataset), the cine cohort and the audio cohorts beside it."""

    patients: int
    images_per_patient: int
    image_size: int
    positive_fraction: float
    seed: int
    cine: CineCohortConfig
    audio: AudioCohortConfig


class VideoConfig(_Section):
    """How clips (video files, DICOM cine) are stored: `components.readers.clips.ClipSpec`."""

    frames: int = Field(ge=1)  # sampled from each clip
    size: int = Field(ge=8)  # rows and columns of each stored frame
    stride: int = Field(ge=0)  # 0: frames spread over the whole clip; k: every k-th frame, centred
    # Regions blacked out in every frame before anything is stored (e.g. an ultrasound banner with
    # burned-in names): [x0, y0, x1, y1] fractions of the width and height (ClipSpec checks them).
    mask: tuple[tuple[float, float, float, float], ...]


class LimitsConfig(_Section):
    """The most one input file may declare (`components.readers.base.DecodeLimits`); a file over any
    of them is refused before it is decoded."""

    max_bytes: int = Field(gt=0)  # the decoded array: every frame, slice, channel or sample
    max_side: int = Field(gt=0)  # rows or columns of one image, slice or frame
    max_frames: int = Field(gt=0)  # frames of a clip or slices of a volume
    max_seconds: float = Field(gt=0)  # duration of a clip or a recording


class AudioIngestConfig(_Section):
    """How recordings are stored (components/readers/audio.py reads them)."""

    # Every recording is resampled to this rate (Hz) at ingest; the model and the service use it.
    sample_rate: int = Field(gt=0)


class IngestConfig(_Section):
    # Column of labels.csv that names each image's file; another key (e.g. a SOP Instance UID) can be named.
    key_column: str
    # Folders of PNG/JPEG with many images per patient can encode the patient in the file name prefix.
    patient_from_filename_prefix: bool
    # Class order (index 1 is the positive class of a binary task); labels outside it are reported and
    # skipped. Empty: numeric names by value, else a "normal"-like name first, then alphabetical.
    class_names: tuple[str, ...]
    # Decoding processes (0: every core this process may use; 1: decode in this process).
    workers: int
    # Images per shard file (images/<NNNNN>.npz), which is also one unit of a decoding process's work.
    shard_size: int
    # Where medmnist:<name> is fetched from when <data root>/<name>.npz is absent ({name} is replaced);
    # empty: never download. The timeout bounds each network operation, so offline runs fail fast.
    medmnist_url: str
    download_timeout_s: float
    # A file declaring more is reported in problems.json, never decoded.
    limits: LimitsConfig
    video: VideoConfig
    audio: AudioIngestConfig
    # What puts an image at risk of text burned into its pixels, which header de-identification cannot
    # remove (components.privacy.burned_in): PNG, JPEG, VIDEO (MP4/MOV/AVI) or a DICOM modality of
    # US, SC, XA, OT without BurnedInAnnotation NO. Such files are refused unless their risk is listed
    # here, e.g. [PNG, US]; a clip is also taken when `video.mask` blacks out a region in every frame.
    accept_burned_in_risk: tuple[str, ...]

    @field_validator("accept_burned_in_risk")
    @classmethod
    def _known_risks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        risks = tuple(v.strip().upper() for v in value)
        if unknown := [v for v in risks if v not in BURNED_IN_RISKS]:
            raise ValueError(f"unknown burned-in text risk(s) {unknown}: use {', '.join(BURNED_IN_RISKS)}")
        return risks


Severity = Literal["blocking", "warning"]

# Every check of components/stages/validate.py; params.yaml's validate.severity says for each whether
# its failure stops the run (blocking) or is only reported (warning).
CHECK_NAMES: tuple[str, ...] = (
    "schema", "not_null", "unique_image_ids", "row_count", "label_set", "class_balance", "splits",
    "patient_leakage", "duplicates_across_splits", "duplicate_images", "image_kind", "image_size", "dtype",
    "spacing", "intensity_range", "constant_images", "modality", "photometric",
    "clip_kind", "clip_frames", "clip_fps", "clip_duration", "clip_resolution", "black_clips",
    "sample_rate", "duration", "level", "clipping", "silence", "dc_offset",
)


class ClipBounds(_Section):
    """Ranges of a clip dataset's source clips (the manifest's clip columns; images are not checked)."""

    frames: Bound  # frames in the source clip
    fps: Bound
    duration_s: Bound
    resolution: Bound  # source frame height and width in pixels
    # A clip whose brightest stored pixel is at most this is black (a dead probe, a blank export).
    black_max: float


class AudioValidateConfig(_Section):
    """Ranges of the manifest's recording columns (docs/manifest.md)."""

    sample_rate: Bound  # Hz of the source files
    duration_s: Bound
    peak_dbfs: Bound  # a recording whose peak is under the lower bound is nearly silent
    max_clipped_fraction: float  # share of sample frames at full scale
    max_silent_fraction: float  # share of 20 ms frames under -60 dBFS
    max_dc_offset: float  # absolute mean sample (full scale 1)


class ValidateConfig(_Section):
    min_rows: int
    max_rows: int
    min_size: int  # height, width (and depth of volumes) in pixels
    max_size: int
    # Class balance: each class's share of all images must lie in [min, max].
    min_class_fraction: float
    max_class_fraction: float
    dtypes: tuple[str, ...]
    # Stored intensity range per modality (the manifest's `modality`; `default` for the rest and for
    # sources without one): Hounsfield units for CT, 0-255 for 8-bit images.
    intensity: dict[str, Bound]
    spacing_mm: Bound
    modalities: tuple[str, ...]
    photometric: tuple[str, ...]
    clips: ClipBounds
    audio: AudioValidateConfig
    severity: dict[str, Severity]
    # The report: thumbnails and histogram samples per class, files listed per failed check.
    thumbnails_per_class: int
    histogram_images_per_class: int
    max_listed_files: int

    @field_validator("severity")
    @classmethod
    def _every_check(cls, value: dict[str, Severity]) -> dict[str, Severity]:
        unknown, missing = sorted(set(value) - set(CHECK_NAMES)), sorted(set(CHECK_NAMES) - set(value))
        if unknown or missing:
            raise ValueError(f"severity: unknown check(s) {unknown}, check(s) without a severity {missing}")
        return value


class DriftConfig(_Section):
    """Differences from the data the production model trained on are always reported. A run whose
    drift exceeds a bound set here is marked in the registry; the bound then either fails validation
    (the default) or, with `require_retraining`, lets the run train on the new data and makes the
    gate refuse any model of that name trained on data older than the drifted dataset (docs/gate.md)."""

    max_class_share_change: float | None  # largest absolute change of one class's share of images
    max_intensity_ks: float | None  # Kolmogorov-Smirnov distance of the per-image mean intensities
    max_size_change: float | None  # largest relative change of the median height, width or depth
    max_site_share_change: float | None  # largest absolute change of one site's share of images
    require_retraining: bool


class AudioPrepareConfig(_Section):
    """Recordings to spectrogram windows (components/ml/audio.py)."""

    window_s: float  # seconds per window; a shorter recording is one window, zero-padded
    hop_s: float  # step between windows over a longer recording
    n_fft: int  # STFT frame (samples at ingest.audio.sample_rate)
    hop_length: int  # STFT step (samples)
    n_mels: int
    band_low_hz: float  # band-pass before the spectrogram; 0: no high-pass
    band_high_hz: float  # 0: no low-pass


class PrepareConfig(_Section):
    val_fraction: float
    test_fraction: float
    seed: int
    # Spatial size fed to the network; 0 keeps the data's own size (capped by max_size).
    image_size: int
    max_size: int
    # CT window in Hounsfield units used when the data is CT; other data is scaled by its dtype's range.
    window_level: float
    window_width: float
    audio: AudioPrepareConfig


class ModelConfig(_Section):
    # auto: a 2D ResNet for images, a 3D ResNet for volumes.
    # (recordings: auto is audio_cnn; crnn on request)
    family: Literal["auto", "resnet", "densenet", "efficientnet", "resnet3d", "cnn_rnn", "frame_cnn", "audio_cnn", "crnn"]
    width: int  # channels of the first block
    depth: Literal[10, 18, 34]  # ResNet depth (resnet, resnet3d and the cnn_rnn encoder)
    dropout: float
    rnn_hidden: int
    # instance: every input (an image, a volume, a whole clip) scaled to zero mean and unit variance by the
    # network's first layer, so gain and brightness set per scan or device are not features; none: as stored.
    input_norm: Literal["none", "instance"]


class AugmentConfig(_Section):
    """Random, label-preserving changes to training images, applied to whole batches at once."""

    enabled: bool
    rotate_degrees: float  # in-plane (H, W) rotation, uniform in +/- this
    zoom: float  # scale factor uniform in [1 - zoom, 1 + zoom]
    translate: float  # shift, as a fraction of the image size
    affine_probability: float  # share of images given a rotation/zoom/shift
    flip_axes: tuple[int, ...]  # spatial axes (negative: from the last) flipped with probability 0.5
    noise_std: float  # Gaussian noise on [0, 1] intensities
    noise_probability: float
    contrast: float  # intensity scale uniform in [1 - contrast, 1 + contrast] about the image mean
    temporal_jitter: float  # clips: each sampled frame moves by up to this many stored frames (order kept)


class AudioAugmentConfig(_Section):
    """Random changes to training spectrogram windows (components.ml.audio.SpectrogramAugmentation)."""

    enabled: bool
    time_shift: float  # circular shift, as a share of the window's frames
    gain_db: float  # level change uniform in +/- this
    noise_std: float  # Gaussian noise on [0, 1] spectrogram values...
    noise_probability: float  # ...given to this share of windows
    freq_masks: int  # SpecAugment: masked mel bands per window...
    freq_mask_bins: int  # ...each up to this many bins wide
    time_masks: int
    time_mask_frames: int


class TrainConfig(_Section):
    model: ModelConfig
    # 0: enough epochs for about `steps` optimizer steps, within [min_epochs, max_epochs]: small
    # datasets get more passes, large ones fewer. A number: exactly that many epochs (at most).
    epochs: int
    steps: int
    min_epochs: int
    max_epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    label_smoothing: float = Field(ge=0, lt=1)
    # > 0: mixup (components.ml.mixup), pairs mixed by a weight drawn from Beta(mixup_alpha, mixup_alpha).
    mixup_alpha: float = Field(ge=0)
    # The saved epoch: best validation AUC, lowest validation loss, or the last one (then no early stopping);
    # on a validation split of a few patients the best AUC can be a lucky early epoch.
    select: Literal["val_auc", "val_loss", "last"]
    patience: int  # epochs without a better validation figure (train.select) before stopping...
    early_stopping_after: float  # ...once this share of the planned epochs has run
    seed: int
    num_threads: int  # 0: every core this process may use
    # Class imbalance: weight the loss by inverse class frequency, or sample batches class-balanced.
    class_balance: Literal["weighted_loss", "sampler", "none"]
    augment: AugmentConfig
    audio_augment: AudioAugmentConfig
    ema_decay: float  # > 0: select and save an exponential moving average of the weights
    # Training images over which BatchNorm statistics are recomputed after each epoch (0: all). The
    # pass costs a forward over them every epoch (at 64^3 a forward is over half a training step: all
    # of AdrenalMNIST3D's 1,188 added 60% to an epoch); on PneumoniaMNIST validation AUC was the same
    # to 0.0001 from 64 to 2,048 images, so 128 keep it a few percent of an epoch.
    bn_recalibration_images: int
    # Batches indexed and augmented ahead of the training step on a background thread where the step leaves
    # it a core (components.ml.prefetch.worth_a_thread; 0, or no core free: in the step's thread).
    prefetch_batches: int = Field(ge=0)
    # Wall-clock budget of the whole training (an ensemble's members get an equal share each): after the first
    # epoch the planned epochs shrink to what fits (the one-cycle schedule re-planned to end with them); past it,
    # training also stops after the current epoch.
    max_minutes: float = Field(gt=0)
    # Seed ensemble: this many networks (seeds seed, seed+1, ...) on the same split, probabilities averaged.
    ensemble: int = Field(ge=1)
    device: Literal["auto", "cpu", "cuda"]
    amp: bool  # bfloat16 autocast, on a GPU only
    compile: bool  # torch.compile, on a GPU only


class BaselineConfig(_Section):
    """The classical baseline: radiomics-style features and a scikit-learn classifier."""

    classifier: Literal["gradient_boosting", "logistic_regression", "random_forest"]
    histogram_bins: int
    grey_levels: int  # grey levels of the co-occurrence (texture) matrices
    seed: int


class EvaluateConfig(_Section):
    bootstrap_samples: int
    operating_point: Literal["youden", "sensitivity"]
    target_sensitivity: float
    temperature_scaling: bool  # fit a temperature on validation; report calibration before/after
    calibration_bins: int
    seed: int
    # Logit adjustment of a class-balanced model to the training data's prior (components.ml.predictor).
    prior_correction: bool
    # Test-time augmentation: mean softmax over the input and its flips along these spatial axes; () off.
    tta_flip_axes: tuple[int, ...]
    # Fit a temperature on validation (NLL) and divide the log-probabilities by it before the prior
    # correction, as the model predicts (stored with it): the correction assumes calibrated probabilities.
    calibrate_prediction: bool


class Bound(_Section):
    """A range; a side left out (or null) is open."""

    lower: float | None = None
    upper: float | None = None


class ChangeThreshold(_Section):
    """Allowed change against the production model; `direction` says which way is better."""

    direction: Literal["higher", "lower"]
    # Either or both; one left out (or null) is not checked.
    absolute: float | None = None
    relative: float | None = None


class GatePolicy(_Section):
    """The checks of one policy; a group left out has no check (a per-model policy names only its own)."""

    values: dict[str, Bound] = Field(default_factory=dict)
    changes: dict[str, ChangeThreshold] = Field(default_factory=dict)
    subgroup_floors: dict[str, float] = Field(default_factory=dict)
    # Human sign-off: a candidate that passed every check waits (awaiting_approval) for an approver,
    # instead of being promoted; the person who triggered its run may approve it only when allowed.
    require_approval: bool = False
    allow_self_approval: bool = False


GateConfig = PerModel[GatePolicy]


class PackageConfig(_Section):
    # Empty: derived from the dataset source (e.g. "pneumoniamnist", "ct-lesion" for the default).
    model_name: str
    # Where the service runs the network: auto = the GPU when the serving host has one.
    device: Literal["auto", "cpu", "cuda"]
    # Most images per forward pass of the service's batcher, on a CPU and on a GPU.
    max_batch_size: int
    gpu_max_batch_size: int
    # The batcher's latency budget: a request expected to wait longer for the network is refused (503).
    max_latency_ms: int
    # Intra-op threads of each serving worker (0: PyTorch's default, all cores).
    torch_threads: int
    # Server processes, each with its own copy of the network and its own batcher; 0: one per CPU the
    # server may use where it runs (one event loop per process is the service's limit on a CPU).
    # On a GPU host set 1: one process keeps the GPU busy with large batches.
    api_workers: int


class ServeConfig(_Section):
    port: int
    max_upload_bytes: int
    # Images accepted in one /predict_batch request (the body limit above applies as well).
    max_batch_images: int
    # Per server process: requests in flight (more get 429), request bodies held at once (more: 503),
    # uploads decoded at once.
    max_concurrency: int
    max_buffered_bytes: int
    decode_threads: int
    # An upload may declare sides (and slices) up to this multiple of the model input's, and a decoded
    # array up to the input scaled so in-plane, never over max_decoded_bytes (services.inference.decode_limits).
    decode_side_multiple: int
    max_decoded_bytes: int
    # Longest clip or recording an upload may declare (checked from its header), for a model of clips or
    # of recordings; a model of images takes neither.
    max_upload_seconds: int
    golden_set_size: int
    probability_tolerance: float
    # `medgate serve` asks the registry for the production Bento this often (0: only on SIGHUP).
    reload_poll_s: float
    # Host names `medgate serve` answers to besides the loopback names and the address it binds.
    allowed_hosts: tuple[str, ...]
    # OpenTelemetry spans for every request (exported where BentoML's own `tracing` configuration names an
    # exporter); false: BentoML's tracing middleware passes every request through untouched.
    tracing: bool


class ModelCardText(_Section):
    """What a model card says about use: written by people, shown verbatim on every card."""

    intended_use: str
    intended_users: str
    limitations: tuple[str, ...]
    out_of_scope: tuple[str, ...]


ModelCardConfig = PerModel[ModelCardText]


class RetrainConfig(_Section):
    """Retraining that runs unattended: `medgate schedule` and `medgate watch` (flows/retrain.py)."""

    cron: str  # the schedule `medgate schedule` registers when --cron is not given
    watch_interval_s: float  # how often a watch hashes the source's content
    lock_wait_s: float  # how long an unattended run waits for a busy workspace before it is refused


class OrchestrationConfig(_Section):
    """Where the flow's work runs (README "Scaling"). Only train_processes can change a result."""

    # sequential: one DVC stage at a time. threads / dask: the independent stages of a wave (train and
    # baseline) at once, in threads or on Dask workers; sweep trials fan out the same way.
    task_runner: Literal["sequential", "threads", "dask"]
    dask_address: str  # a running Dask scheduler (tcp://host:8786); empty: a local cluster
    dask_workers: int  # worker processes of that local cluster
    # > 1: train under torchrun with DistributedDataParallel, this many processes on this node
    # (gloo on CPU, NCCL on GPU). The weights differ slightly from one process's, so it is a train dependency.
    train_processes: int


class Params(_Section):
    cohort: CohortConfig
    ingest: IngestConfig
    validate_: ValidateConfig = Field(alias="validate")
    drift: DriftConfig
    prepare: PrepareConfig
    train: TrainConfig
    baseline: BaselineConfig
    evaluate: EvaluateConfig
    gate: GateConfig
    package: PackageConfig
    serve: ServeConfig
    modelcard: ModelCardConfig
    retrain: RetrainConfig
    orchestration: OrchestrationConfig


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overrides` set: nested mappings merge key by key, other values replace."""
    out = dict(base)
    for key, value in overrides.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merged(out[key], value) if both else value
    return out


@functools.cache
def _project_params() -> dict[str, Any]:
    return yaml.safe_load(PARAMS_FILE.read_text())


def default_params(**overrides: Any) -> Params:
    """The project's params.yaml, with nested `overrides` by section (`prepare={"seed": 1}`,
    `train={"model": {"width": 4}}`): the values of code and tests that run without a workspace.

    Raises:
        FileNotFoundError: the package runs without the project beside it (e.g. inside a Bento).
    """
    if not PARAMS_FILE.is_file():
        raise FileNotFoundError(f"{PARAMS_FILE}: the project's params file is not beside the package")
    return Params.model_validate(merged(_project_params(), overrides))


def load_params(path: Path) -> Params:
    """Read and check `params.yaml`; unknown keys are an error naming the file."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return Params.model_validate(raw)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: params file not found") from None
    except Exception as exc:  # pydantic and yaml errors both deserve the file name
        raise ValueError(f"{path}: invalid params: {exc}") from exc


def stage_arguments(description: str | None, inputs: Sequence[str],
                    optional: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The command line of a stage's `main()`; `main()` reads the params with `load_params(args.params)`.

    `--params` (default params.yaml), then one required folder per name in `inputs` and `--out`,
    then one folder per name in `optional` (default None; the value is its help).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    for name in (*inputs, "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    for name, help_text in (optional or {}).items():
        parser.add_argument(f"--{name}", type=Path, default=None, help=help_text)
    return parser.parse_args()
