"""Package a trained model: BentoML model store entry, a Bento pinned to it, a smoke test of the Bento,
and the commands that serve it (`bentoml serve`) or build its container image (`bentoml containerize`).

The Bento carries the service (`services/`) and the training code it imports (`components/`:
`transforms.preprocess`, `models.load_model`, `ingest.decode_image`) as files, plus
`services/model_ref.json`: the exact model tag and the serving settings. Nothing in the repository is
written by a build. Bentos refer to the model in the BentoML model store (`bentoml export` bundles it).

Telemetry: every `bentoml` subprocess started here gets `BENTOML_DO_NOT_TRACK=true`; a program calling
`save_to_model_store` in-process sets it at its own start (STACK-NOTES).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
import yaml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml.exceptions import NotFound

from components.config import PackageConfig, ServeConfig, default_params

if TYPE_CHECKING:
    import httpx

MODEL_REF_FILE = "model_ref.json"
# Read by the service where it starts (never stored in a Bento): when set, requests need this key.
API_KEY_ENV = "MEDGATE_API_KEY"
SERVICE_IMPORT = "services.service:Classifier"
# Distributions the service imports; pinned in the Bento to the versions it was built and tested with.
SERVICE_DISTRIBUTIONS = ("numpy", "torch", "monai", "pillow", "pydicom", "nibabel", "pydantic", "pyyaml")
_SOURCE_PACKAGES = ("services", "components")
_QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1"}
# Environment that would make a Bento import something other than its own copy, or another model.
_DROPPED_ENV = ("PYTHONPATH", "MEDGATE_MODEL_TAG")


_SETTING_KEYS = (
    "max_batch_size",
    "gpu_max_batch_size",
    "max_latency_ms",
    "torch_threads",
    "api_workers",
    "max_upload_bytes",
    "max_batch_images",
)


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    """What `services/model_ref.json` holds inside a Bento: the pinned model and how to serve it."""

    model_tag: str
    input_shape: tuple[int, ...]
    max_batch_size: int
    gpu_max_batch_size: int
    max_latency_ms: int
    torch_threads: int
    api_workers: int
    max_upload_bytes: int
    max_batch_images: int
    device: str

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
        if self.max_upload_bytes < 1 or self.max_batch_images < 1:
            raise ValueError("serve settings: max_upload_bytes and max_batch_images must be positive")

    @classmethod
    def configured(cls, model_tag: str, input_shape: tuple[int, ...], cfg: PackageConfig, serve_cfg: ServeConfig) -> ServingSettings:
        """The settings params.yaml's `package` and `serve` sections give a model of `input_shape`."""
        return cls(
            model_tag=model_tag,
            input_shape=input_shape,
            max_batch_size=cfg.max_batch_size,
            gpu_max_batch_size=cfg.gpu_max_batch_size,
            device=cfg.device,
            max_latency_ms=cfg.max_latency_ms,
            torch_threads=cfg.torch_threads,
            api_workers=cfg.api_workers,
            max_upload_bytes=serve_cfg.max_upload_bytes,
            max_batch_images=serve_cfg.max_batch_images,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ServingSettings:
        known = {k: raw[k] for k in _SETTING_KEYS if k in raw}
        return cls(
            model_tag=str(raw["model_tag"]),
            input_shape=tuple(int(s) for s in raw["input_shape"]),
            **{k: int(v) for k, v in known.items()},
            **({"device": str(raw["device"])} if "device" in raw else {}),
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


def save_to_model_store(
    model_dir: Path,
    name: str,
    metadata: Mapping[str, Any],
    version: str | None = None,
    files: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Copy `model.pt` and `model.json` (from `components.ml.models.save_model`) into the BentoML model store.

    The stored metadata is `metadata` (e.g. `dataset_version`, `run_id`, `gate`), overridden by what
    the files say: `sha256` of model.pt, `spec_sha256` of the stored model.json and the ModelSpec
    fields (`class_names`, `preprocessing`, `operating_threshold`, `input_shape`, `family`, `model`).
    An `operating_threshold` in `metadata` (the operating point chosen at evaluation) replaces the one
    in model.json, in the stored model.json too, so the service decides at the evaluated point.

    Args:
        model_dir: folder holding model.pt and model.json.
        name: model name in the store (lowercase letters, digits, `-`, `_`, `.`).
        metadata: JSON-serialisable facts to keep with the model.
        version: the version to use; BentoML generates one when None.
        files: more text files to keep beside the weights, name -> content (e.g. the model card).

    Returns:
        (the exact tag "name:version", sha256 of model.pt)
    """
    # Imported here: the service imports this module for ServingSettings, and must start without MONAI.
    from components.ml.models import SPEC_FILE, WEIGHTS_FILE, ModelSpec, file_sha256

    weights, spec_file = Path(model_dir) / WEIGHTS_FILE, Path(model_dir) / SPEC_FILE
    for required in (weights, spec_file):
        if not required.is_file():
            raise FileNotFoundError(f"{required}: not found (written by components.ml.models.save_model)")
    spec = ModelSpec.from_dict(json.loads(spec_file.read_text()))
    threshold = metadata.get("operating_threshold")
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"operating_threshold {threshold} is not a probability")
        spec = dataclasses.replace(spec, operating_threshold=float(threshold))
    spec_bytes = json.dumps(spec.to_dict(), indent=2).encode()
    sha256 = file_sha256(weights)
    stored_metadata = {
        **json.loads(json.dumps(dict(metadata))),  # a JSON-safe copy: BentoML rewrites metadata in place
        **spec.to_dict(),
        "sha256": sha256,
        "spec_sha256": hashlib.sha256(spec_bytes).hexdigest(),
    }
    tag = bentoml.Tag(name, version)
    with bentoml.models.create(tag, metadata=stored_metadata) as model:
        shutil.copyfile(weights, model.path_of(WEIGHTS_FILE))
        Path(model.path_of(SPEC_FILE)).write_bytes(spec_bytes)
        for file_name, text in (files or {}).items():
            if Path(file_name).name != file_name or file_name in (WEIGHTS_FILE, SPEC_FILE):
                raise ValueError(f"{file_name!r}: extra model files are plain names other than the model's own")
            Path(model.path_of(file_name)).write_text(text, encoding="utf-8")
        if file_sha256(Path(model.path_of(WEIGHTS_FILE))) != sha256:
            raise OSError(f"{weights}: changed while being copied into the model store")
    return str(model.tag), sha256


def build_bento(
    model_tag: str,
    cfg: PackageConfig,
    labels: Mapping[str, Any],
    *,
    serve_cfg: ServeConfig | None = None,
    source_root: Path | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Build, offline, a Bento of the medgate service pinned to the exact model `model_tag`.

    A temporary build context receives copies of `services/` and `components/` from `source_root`
    (default: the folder this package was imported from) and `services/model_ref.json`; `bentoml build`
    runs on it in a subprocess, so the build imports that copy and never this process's modules.

    Args:
        model_tag: "name:version" of a model saved by `save_to_model_store`.
        cfg: Bento name (`model_name`, default: the model's name) and adaptive batching settings.
        labels: stored on the Bento (e.g. dataset version, git commit); values become strings.
        serve_cfg: upload limits for the service (default: the project's params.yaml).
        source_root: folder holding `services/` and `components/`.
        timeout_s: limit for the build command.

    Returns:
        The Bento tag "name:version".

    Raises:
        ValueError: the tag is not exact, or the model is missing or has no sha256.
        RuntimeError: the build failed (its output is in the message), or the Bento is not pinned as asked.
    """
    model_tag = exact_model_tag(model_tag)
    serve_cfg = serve_cfg or default_params().serve
    try:
        stored = bentoml.models.get(model_tag)
    except NotFound:
        raise ValueError(f"model {model_tag} is not in the BentoML model store") from None
    meta: dict[str, Any] = dict(stored.info.metadata)
    if not meta.get("sha256") or "input_shape" not in meta:
        raise ValueError(
            f"model {model_tag} has no sha256/input_shape metadata: save it with save_to_model_store"
        )
    settings = ServingSettings.configured(model_tag, tuple(int(s) for s in meta["input_shape"]), cfg, serve_cfg)
    root = Path(source_root) if source_root is not None else Path(__file__).resolve().parents[2]
    bento_labels = {
        **{str(k): str(v) for k, v in labels.items()},
        "model_tag": model_tag,
        "model_sha256": str(meta["sha256"]),
    }
    with tempfile.TemporaryDirectory(prefix="medgate-bento-") as tmp:
        ctx = Path(tmp)
        for package in _SOURCE_PACKAGES:
            if not (root / package / "__init__.py").is_file():
                raise FileNotFoundError(f"{root / package}: package to put in the Bento not found")
            shutil.copytree(
                root / package,
                ctx / package,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", MODEL_REF_FILE),
            )
        (ctx / "services" / MODEL_REF_FILE).write_text(json.dumps(settings.to_dict(), indent=2))
        bentofile = ctx / "bentofile.yaml"
        bentofile.write_text(
            yaml.safe_dump(
                {
                    "service": SERVICE_IMPORT,
                    "name": cfg.model_name or model_tag.partition(":")[0],
                    "labels": bento_labels,
                    "description": f"medgate classifier serving model {model_tag}",
                    "include": ["services/**/*.py", f"services/{MODEL_REF_FILE}", "components/**/*.py"],
                    "exclude": ["__pycache__/"],
                    "models": [model_tag],
                    "envs": [{"name": k, "value": v} for k, v in _QUIET_ENV.items()],
                    "python": {"packages": _pinned_distributions(), "lock_packages": False},
                },
                sort_keys=False,
            )
        )
        command = [
            sys.executable,
            "-m",
            "bentoml",
            "build",
            str(ctx),
            "-f",
            str(bentofile),
            "--output",
            "tag",
        ]
        try:
            proc = subprocess.run(
                command,
                check=False,
                cwd=ctx,
                env=_child_env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"bentoml build did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml build failed ({proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}")
    bento_tag = _parse_built_tag(proc.stdout)
    _verify_pin(bento_tag, model_tag)
    return bento_tag


def smoke_test_bento(
    bento_tag: str,
    golden: Sequence[tuple[Path, Sequence[float]]],
    tolerance: float,
    timeout_s: float = 90,
) -> dict[str, Any]:
    """Serve the Bento on 127.0.0.1 and check it answers the golden images as offline inference did.

    The server runs without an API key whatever the environment says: it is this check's own,
    on loopback, for the check's duration. It is always stopped; a failure to start or answer is
    reported in the check (see `check_golden`), never raised.
    """
    import httpx

    if not golden:
        return _parity_check(None, False, "no golden images to compare", tolerance)
    host = "127.0.0.1"
    port = find_free_port(host)
    base = f"http://{host}:{port}"
    with (
        tempfile.TemporaryFile("w+b") as log,
        serve_in_background(bento_tag, port, host, log, env={API_KEY_ENV: None}) as proc,
    ):
        ready = wait_until_ready(base, proc, timeout_s)
        if ready is not None:
            detail = f"{bento_tag} did not become ready: {ready}\n{_read_tail(log)}"
            return _parity_check(None, False, detail, tolerance)
        with httpx.Client(base_url=base, timeout=30.0) as client:
            return check_golden(client, golden, tolerance)


def check_golden(
    client: httpx.Client, golden: Sequence[tuple[Path, Sequence[float]]], tolerance: float
) -> dict[str, Any]:
    """Send each golden image to a running service's `/predict` and compare with the offline answers.

    Each golden entry is a `.npy` of a stored image array and its expected class probabilities, in
    the model's `class_names` order. The check passes when every label matches (ties within
    tolerance excepted) and every probability is within `tolerance`.

    Returns:
        {"metric": "serving_parity", "value": max |p_served - p_expected| or None, "threshold": tolerance,
         "comparison": "<=", "passed": bool, "detail": str}
    """
    import httpx

    if not golden:
        return _parity_check(None, False, "no golden images to compare", tolerance)
    max_diff = 0.0
    problems: list[str] = []
    try:
        class_names = client.get("/metadata").raise_for_status().json()["class_names"]
        for path, expected in golden:
            path = Path(path)
            resp = client.post("/predict", files={"image": (path.name, path.read_bytes())})
            if resp.status_code != 200:
                problems.append(f"{path.name}: HTTP {resp.status_code} {resp.text[:200]}")
                continue
            answer = resp.json()
            served = [float(answer["probabilities"][name]) for name in class_names]
            if len(served) != len(expected):
                problems.append(f"{path.name}: {len(served)} classes served, {len(expected)} expected")
                continue
            diff = max(abs(s - float(e)) for s, e in zip(served, expected, strict=True))
            max_diff = max(max_diff, diff)
            if diff > tolerance:
                problems.append(f"{path.name}: probabilities differ by {diff:.3g}")
            expected_label = _confident_label(expected, class_names, tolerance)
            if expected_label is not None and answer["label"] != expected_label:
                problems.append(f"{path.name}: label {answer['label']!r}, expected {expected_label!r}")
    except (httpx.HTTPError, OSError, ValueError, KeyError, TypeError) as exc:
        return _parity_check(None, False, f"request to {client.base_url} failed: {type(exc).__name__}: {exc}", tolerance)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        detail = f"{len(problems)} of {len(golden)} golden images disagree: {shown}"
        return _parity_check(max_diff, False, detail, tolerance)
    detail = f"{len(golden)} golden images match within {tolerance} (max diff {max_diff:.3g})"
    return _parity_check(max_diff, True, detail, tolerance)


def _parity_check(value: float | None, passed: bool, detail: str, tolerance: float) -> dict[str, Any]:
    return {
        "metric": "serving_parity",
        "value": value,
        "threshold": tolerance,
        "comparison": "<=",
        "passed": passed,
        "detail": detail,
    }


def serve_command(bento_tag: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command that serves a Bento, bound to `host` (loopback by default)."""
    return [sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", host, "--port", str(port)]


@contextlib.contextmanager
def serve_in_background(
    bento_tag: str,
    port: int,
    host: str = "127.0.0.1",
    log: Any = None,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """`bentoml serve` in its own process group, stopped (SIGTERM, then SIGKILL) when the block ends.

    `bento_tag` may also be a service import path ("module:Class") found from `cwd`.
    `log`: a binary file for the server's output (default: this process's stdout/stderr).
    `env`: environment changes for the server; None removes a variable.
    """
    child_env = _child_env()
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    proc = subprocess.Popen(
        serve_command(bento_tag, port, host),
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
        cwd=cwd,
    )
    try:
        yield proc
    finally:
        _stop(proc)


def containerize_command(bento_tag: str, image_tag: str, backend: str = "docker") -> list[str]:
    """`bentoml containerize` of `bento_tag` into the image `image_tag`, as an operator would type it."""
    return ["bentoml", "containerize", bento_tag, "--backend", backend, "--image-tag", image_tag]


def container_engine_problem(backend: str = "docker", timeout_s: float = 15.0) -> str | None:
    """None when the container engine answers (`<backend> info`), else why not."""
    executable = shutil.which(backend)
    if executable is None:
        return f"{backend} is not installed (not on PATH)"
    try:
        proc = subprocess.run(
            [executable, "info"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return f"`{backend} info` did not answer within {timeout_s:.0f} s"
    if proc.returncode != 0:
        return f"`{backend} info` failed: {_tail(proc.stderr or proc.stdout, 3)}"
    return None


def containerize_bento(bento_tag: str, image_tag: str, backend: str = "docker") -> int:
    """Run `containerize_command` with this process's BentoML store; its output goes to the terminal."""
    command = [sys.executable, "-m", *containerize_command(bento_tag, image_tag, backend)]
    return subprocess.run(command, env=_child_env(), stdin=subprocess.DEVNULL, check=False).returncode


def wait_until_ready(base_url: str, proc: subprocess.Popen[Any], timeout_s: float) -> str | None:
    """None once `{base_url}/readyz` answers 200; else why not (the server exited, or timed out)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"server exited with status {proc.returncode}"
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return f"not ready after {timeout_s:.0f} s"


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(_QUIET_ENV)
    # The child must use the store this process uses, even if BENTOML_HOME changed after BentoML read it.
    env["BENTOML_HOME"] = str(BentoMLContainer.bentoml_home.get())
    # `bentoml build` needs `uv` from this interpreter's environment, or it tries to download it.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _stop(proc: subprocess.Popen[Any]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _confident_label(expected: Sequence[float], class_names: Sequence[str], tolerance: float) -> str | None:
    """The expected label, or None when the top two expected probabilities are within tolerance (a tie)."""
    ranked = sorted(range(len(expected)), key=lambda i: float(expected[i]), reverse=True)
    if len(ranked) > 1 and float(expected[ranked[0]]) - float(expected[ranked[1]]) <= 2 * tolerance:
        return None
    return class_names[ranked[0]]


def _parse_built_tag(stdout: str) -> str:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("__tag__:"):
            return line.removeprefix("__tag__:").strip()
    raise RuntimeError(f"bentoml build printed no tag:\n{_tail(stdout)}")


def _verify_pin(bento_tag: str, model_tag: str) -> None:
    bento = bentoml.bentos.get(bento_tag)
    pinned = sorted(str(m.tag) for m in bento.info.all_models)
    ref = ServingSettings.read(Path(bento.path_of(f"src/services/{MODEL_REF_FILE}")))
    if pinned != [model_tag] or ref.model_tag != model_tag:
        raise RuntimeError(f"Bento {bento_tag} pins {pinned} / {ref.model_tag}, expected exactly {model_tag}")


def _pinned_distributions() -> list[str]:
    pins = []
    for name in SERVICE_DISTRIBUTIONS:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            pins.append(f"{name}=={importlib_metadata.version(name).split('+')[0]}")
    return pins


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_tail(log: Any, lines: int = 20) -> str:
    log.flush()
    log.seek(0)
    return _tail(log.read().decode("utf-8", "replace"), lines)
