"""package: the trained model into the BentoML model store, and a Bento of the medgate service pinned to it.

The Bento carries exactly the project modules the service imports (`services.service` and, transitively,
what it takes from `components/`: read from source by `components.imports.import_closure`) as files,
plus `model_ref.json` beside the service module: the exact model tag and the serving settings
(`services.settings` computes them; this module takes them as a plain mapping). Nothing in the
repository is written by a build. Bentos refer to the model in the BentoML model store (`bentoml
export` bundles it).

Telemetry: every `bentoml` subprocess started here (and by `services.processes`) gets
`BENTOML_DO_NOT_TRACK=true`; a program calling `save_to_model_store` in-process sets it at its own
start (STACK-NOTES).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import bentoml
import yaml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml.exceptions import NotFound

from components.data.artifacts import MODEL_REF_FILE
from components.imports import external_imports, import_closure

SERVICE_MODULE = "services.service"
SERVICE_IMPORT = f"{SERVICE_MODULE}:Classifier"
# Where the service reads its settings: beside its module (services.settings.PINNED_SETTINGS_FILE).
SETTINGS_PATH = Path(*SERVICE_MODULE.split(".")[:-1], MODEL_REF_FILE).as_posix()
# Pinned in the Bento besides the distributions its modules import: uvicorn's HTTP parser in C, which
# BentoML's server takes where it is installed (0.03 CPU-ms on a service request, where its pure-Python
# fallback h11 takes 0.11).
SERVER_DISTRIBUTIONS = ("httptools",)
# BentoML installs itself into a Bento's environment, at the version that built it.
_UNPINNED = {"bentoml"}
_QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1"}
# Environment that would make a Bento import something other than its own copy, or another model.
_DROPPED_ENV = ("PYTHONPATH", "MEDGATE_MODEL_TAG")


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
    in model.json, in the stored model.json too, so the service decides at the evaluated point; so
    does a `prediction` (evaluate's `tta_flip_axes`, `prior_correction` and `temperature`, metrics.json's `prediction`),
    so the service predicts as evaluation measured.

    Args:
        model_dir: folder holding model.pt and model.json.
        name: model name in the store (lowercase letters, digits, `-`, `_`, `.`).
        metadata: JSON-serialisable facts to keep with the model.
        version: the version to use; BentoML generates one when None.
        files: more text files to keep beside the weights, name -> content (e.g. the model card).

    Returns:
        (the exact tag "name:version", sha256 of model.pt)
    """
    # Imported here: the services' server helpers import this module, and must start without MONAI.
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
    prediction = metadata.get("prediction")
    if prediction is not None:
        spec = spec.predicting(prediction["tta_flip_axes"], bool(prediction["prior_correction"]), float(prediction.get("temperature", 1.0)))
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
    settings: Mapping[str, Any],
    labels: Mapping[str, Any],
    *,
    name: str | None = None,
    source_root: Path | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Build, offline, a Bento of the medgate service pinned to the exact model `settings["model_tag"]`.

    A temporary build context receives copies of the service's modules (`bento_sources`) from
    `source_root` (default: the folder this package was imported from) and `settings` as the
    service's `model_ref.json`; `bentoml build` runs on it in a subprocess, so the build imports
    that copy and never this process's modules.

    Args:
        settings: the serving settings (`services.settings.ServingSettings.to_dict()`): the exact
            model tag of a model saved by `save_to_model_store`, its input shape, batching and limits.
        labels: stored on the Bento (e.g. dataset version, git commit); values become strings.
        name: the Bento's name (default: the model's name).
        source_root: folder holding `services/` and `components/`.
        timeout_s: limit for the build command.

    Returns:
        The Bento tag "name:version".

    Raises:
        ValueError: the tag is not exact, or the model is missing or has no sha256.
        RuntimeError: the build failed (its output is in the message), or the Bento is not pinned as asked.
    """
    model_tag = str(settings["model_tag"])
    sha256 = _stored_sha256(model_tag)
    root = Path(source_root) if source_root is not None else Path(__file__).resolve().parents[2]
    sources = bento_sources(root)
    bento_labels = {**{str(k): str(v) for k, v in labels.items()}, "model_tag": model_tag, "model_sha256": sha256}
    bentofile = {
        "service": SERVICE_IMPORT,
        "name": name or model_tag.partition(":")[0],
        "labels": bento_labels,
        "description": f"medgate classifier serving model {model_tag}",
        "include": [*sources, SETTINGS_PATH],
        "exclude": ["__pycache__/"],
        "models": [model_tag],
        "envs": [{"name": k, "value": v} for k, v in _QUIET_ENV.items()],
        "python": {"packages": pinned_distributions(root, sources), "lock_packages": False},
    }
    with tempfile.TemporaryDirectory(prefix="medgate-bento-") as tmp:
        ctx = Path(tmp)
        for relative in sources:
            (ctx / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / relative, ctx / relative)
        (ctx / SETTINGS_PATH).write_text(json.dumps(dict(settings), indent=2))
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
        bento_tag = _run_build(ctx, timeout_s)
    _verify_pin(bento_tag, model_tag)
    return bento_tag


def bento_sources(root: Path) -> list[str]:
    """The project files a Bento carries: the service module and every project module it imports
    (with their packages' `__init__.py`), as sorted paths relative to `root`."""
    files = import_closure(root, [SERVICE_MODULE])
    service = root.joinpath(*SERVICE_MODULE.split(".")).with_suffix(".py")
    if service not in files:
        raise FileNotFoundError(f"{service}: the service to put in the Bento not found")
    return sorted(path.relative_to(root).as_posix() for path in files)


def _stored_sha256(model_tag: str) -> str:
    """The sha256 of model.pt kept with `model_tag`, which must name one model version in the store."""
    try:
        stored = bentoml.models.get(model_tag)
    except NotFound:
        raise ValueError(f"model {model_tag} is not in the BentoML model store") from None
    if str(stored.tag) != model_tag:  # a bare name or ":latest" resolves to another version later
        raise ValueError(f"model tag {model_tag!r} is not an exact version: give 'name:version', never ':latest'")
    sha256 = stored.info.metadata.get("sha256")
    if not sha256:
        raise ValueError(f"model {model_tag} has no sha256 metadata: save it with save_to_model_store")
    return str(sha256)


def _run_build(ctx: Path, timeout_s: float) -> str:
    """`bentoml build` of the context `ctx` (its bentofile.yaml) in a subprocess; the Bento's tag."""
    command = [sys.executable, "-m", "bentoml", "build", str(ctx), "-f", str(ctx / "bentofile.yaml"), "--output", "tag"]
    try:
        proc = subprocess.run(command, check=False, cwd=ctx, env=bentoml_env(), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"bentoml build did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml build failed ({proc.returncode}):\n{output_tail(proc.stdout + proc.stderr)}")
    return _parse_built_tag(proc.stdout)


def bentoml_env() -> dict[str, str]:
    """The environment of a `bentoml` subprocess (build, serve, containerize) started by medgate."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(_QUIET_ENV)
    # The child must use the store this process uses, even if BENTOML_HOME changed after BentoML read it.
    env["BENTOML_HOME"] = str(BentoMLContainer.bentoml_home.get())
    # `bentoml build` needs `uv` from this interpreter's environment, or it tries to download it.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def output_tail(text: str, lines: int = 40) -> str:
    """The last `lines` lines of a command's output (for error messages)."""
    return "\n".join(text.strip().splitlines()[-lines:])


def _parse_built_tag(stdout: str) -> str:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("__tag__:"):
            return line.removeprefix("__tag__:").strip()
    raise RuntimeError(f"bentoml build printed no tag:\n{output_tail(stdout)}")


def _verify_pin(bento_tag: str, model_tag: str) -> None:
    bento = bentoml.bentos.get(bento_tag)
    pinned = sorted(str(m.tag) for m in bento.info.all_models)
    ref = json.loads(Path(bento.path_of(f"src/{SETTINGS_PATH}")).read_text())["model_tag"]
    if pinned != [model_tag] or ref != model_tag:
        raise RuntimeError(f"Bento {bento_tag} pins {pinned} / {ref}, expected exactly {model_tag}")


def pinned_distributions(root: Path, sources: list[str]) -> list[str]:
    """`name==version` of every installed distribution the `sources` (paths under `root`) import from
    outside the project, and of `SERVER_DISTRIBUTIONS`: the versions the Bento was built and tested with.
    Read from the sources, so that a reader's new library cannot be missing from a containerised Bento."""
    providers = importlib_metadata.packages_distributions()
    names = {dist for module in external_imports(root / s for s in sources) for dist in providers.get(module, [])}
    pins = []
    for name in sorted((names | set(SERVER_DISTRIBUTIONS)) - _UNPINNED, key=str.lower):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            pins.append(f"{name}=={importlib_metadata.version(name).split('+')[0]}")
    return pins
