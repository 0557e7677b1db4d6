"""The service's runtime settings: the exact model a Bento serves and how (batching, workers, limits).

A Bento holds them as `model_ref.json` beside the service module (written by
`components.stages.package.build_bento` from `settings_for_model(...).to_dict()`); `services.service`
reads them where it starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from components.config import PackageConfig, ServeConfig
from components.data.artifacts import MODEL_REF_FILE

# Read by the service where it starts (never stored in a Bento): when set, requests need this key.
API_KEY_ENV = "MEDGATE_API_KEY"
# Set by `medgate serve` for its backends: the registry's artifact_sha256 of the version it serves.
# When set, the service serves model.pt only if its content has this hash.
MODEL_SHA256_ENV = "MEDGATE_MODEL_SHA256"
# The integer settings beside the model tag, input shape, device and tracing.
SETTING_KEYS = (
    "max_batch_size",
    "gpu_max_batch_size",
    "max_latency_ms",
    "torch_threads",
    "api_workers",
    "max_upload_bytes",
    "max_batch_images",
    "max_concurrency",
    "max_buffered_bytes",
    "decode_side_multiple",
    "max_decoded_bytes",
    "decode_threads",
    "max_upload_seconds",
)
PINNED_SETTINGS_FILE = Path(__file__).with_name(MODEL_REF_FILE)
# A service's BentoML `tracing` config with every URL excluded from the OpenTelemetry middleware (serve.tracing
# false): with no exporter configured, medgate's offline default, its spans went nowhere, yet cost about a
# fifth of a small request's CPU (1.9 against 1.5 CPU-ms at concurrency 32, benchmarks/serving.py).
UNTRACED = {"excluded_urls": [".*"]}
# Longest a batch expected to take may run on the event loop (MicroBatcher's inline_s): probes and new
# requests wait for it meanwhile.
INLINE_FORWARD_S = 0.02


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    """What `model_ref.json` holds inside a Bento: the pinned model and how to serve it."""

    model_tag: str
    input_shape: tuple[int, ...]
    max_batch_size: int
    gpu_max_batch_size: int
    max_latency_ms: int
    torch_threads: int
    api_workers: int
    max_upload_bytes: int
    max_batch_images: int
    max_concurrency: int
    max_buffered_bytes: int
    decode_side_multiple: int
    max_decoded_bytes: int
    decode_threads: int
    max_upload_seconds: int
    device: str
    tracing: bool

    def __post_init__(self) -> None:
        exact_model_tag(self.model_tag)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"package settings: device must be auto, cpu or cuda; got {self.device!r}")
        if min(self.max_batch_size, self.gpu_max_batch_size) < 2 or self.max_latency_ms < 1 or self.torch_threads < 0 or self.api_workers < 0:
            raise ValueError(
                "package settings: need max_batch_size and gpu_max_batch_size >= 2, max_latency_ms >= 1, torch_threads >= 0, "
                f"api_workers >= 0; got {self.max_batch_size}, {self.max_latency_ms}, {self.torch_threads}, "
                f"{self.api_workers}"
            )
        bounds = (self.max_upload_bytes, self.max_batch_images, self.max_concurrency, self.max_buffered_bytes,
                  self.decode_side_multiple, self.max_decoded_bytes, self.decode_threads, self.max_upload_seconds)
        if min(bounds) < 1:
            raise ValueError("serve settings: max_upload_bytes, max_batch_images, max_concurrency, max_buffered_bytes, "
                             f"decode_side_multiple, max_decoded_bytes, decode_threads and max_upload_seconds must be positive; got {bounds}")
        if self.max_buffered_bytes < self.max_upload_bytes:
            raise ValueError(f"serve settings: max_buffered_bytes ({self.max_buffered_bytes}) is below max_upload_bytes "
                             f"({self.max_upload_bytes}): no upload at the limit could be read")

    def workers(self) -> int:
        """`api_workers`, where 0 means one per CPU this server may use (its affinity, not the host's count)."""
        return self.api_workers or len(os.sched_getaffinity(0))

    def batch_limit(self, device_type: str) -> int:
        """Most images per forward pass: `gpu_max_batch_size` on a GPU, `max_batch_size` on a CPU."""
        return self.gpu_max_batch_size if device_type == "cuda" else self.max_batch_size

    def inline_forward_s(self, device_type: str) -> float:
        """MicroBatcher's `inline_s`: INLINE_FORWARD_S on a CPU server whose workers' forward passes use every
        CPU it may use, else 0. A worker thread lets the event loop read requests while the network computes
        only where a CPU (or a GPU) is free to compute meanwhile; without one, the forward pass on the event
        loop itself costs less: 0.06-0.10 server CPU-ms per request at concurrency 32 and 0.4-1.0 ms of p50 at
        concurrency 1 (the default network, benchmarks/serving.py's stand-in, 2 CPUs; two interleaved A/B runs)."""
        cpus = len(os.sched_getaffinity(0))
        busy = self.workers() * (self.torch_threads or cpus) >= cpus
        return INLINE_FORWARD_S if device_type == "cpu" and busy else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ServingSettings:
        return cls(
            model_tag=str(raw["model_tag"]),
            input_shape=tuple(int(s) for s in raw["input_shape"]),
            device=str(raw["device"]),
            tracing=bool(raw["tracing"]),
            **{k: int(raw[k]) for k in SETTING_KEYS},
        )

    @classmethod
    def read(cls, path: Path) -> ServingSettings:
        return cls.from_dict(json.loads(path.read_text()))


def exact_model_tag(tag: str) -> str:
    """`tag` if it names one exact version ("name:version"); ValueError for a bare name or `:latest`."""
    name, _, version = tag.partition(":")
    if not name or not version or version == "latest":
        raise ValueError(f"model tag {tag!r} is not an exact version: give 'name:version', never ':latest'")
    return tag


def stored_input_shape(model_tag: str) -> tuple[int, ...]:
    """The input shape kept with the exact model `model_tag` in the local BentoML model store (never downloads).

    Raises:
        ValueError: the tag is not exact, the model is not in the store, or it has no input shape.
    """
    try:
        stored = bentoml.models.get(exact_model_tag(model_tag))
    except NotFound:
        raise ValueError(f"model {model_tag} is not in the BentoML model store") from None
    shape = stored.info.metadata.get("input_shape")
    if shape is None:
        raise ValueError(f"model {model_tag} has no input_shape metadata: save it with save_to_model_store")
    return tuple(int(s) for s in shape)


def settings_for_model(
    model_tag: str, package: PackageConfig, serve: ServeConfig, input_shape: tuple[int, ...] | None = None
) -> ServingSettings:
    """The settings a Bento of `model_tag` serves with: params' package and serve sections, and the
    model's input shape (default: the one stored with it)."""
    # Every other field is the package or serve key of the same name (ServingSettings checks them).
    sections = {**package.model_dump(), **serve.model_dump()}
    keys = {f.name for f in dataclasses.fields(ServingSettings)} - {"model_tag", "input_shape"}
    return ServingSettings(model_tag=model_tag, input_shape=input_shape or stored_input_shape(model_tag),
                           **{key: sections[key] for key in keys})
