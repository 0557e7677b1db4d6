"""The smoke test of a Bento: serve it on loopback and check it answers golden images as offline inference did."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.stages.package import output_tail
from services.origin import ALLOWED_HOSTS_ENV, LOOPBACK_NAMES
from services.processes import find_free_port, serve_in_background, wait_until_ready
from services.settings import API_KEY_ENV, MODEL_SHA256_ENV

if TYPE_CHECKING:
    import httpx


def smoke_test_bento(
    bento_tag: str,
    golden: Sequence[tuple[Path, Sequence[float]]],
    tolerance: float,
    timeout_s: float = 90,
    model_sha256: str | None = None,
) -> dict[str, Any]:
    """Serve the Bento on 127.0.0.1 and check it answers the golden images as offline inference did.

    The server runs without an API key whatever the environment says: it is this check's own,
    on loopback, for the check's duration. It is always stopped; a failure to start or answer is
    reported in the check (see `check_golden`), never raised. `model_sha256`: the registry's hash of
    model.pt, which the server then checks before it serves (a mismatch: it never becomes ready).
    """
    import httpx

    if not golden:
        return _parity_check(None, False, "no golden images to compare", tolerance)
    host = "127.0.0.1"
    port = find_free_port(host)
    # Keyless on loopback: answered only under a loopback name and never to another site's web page.
    env = {API_KEY_ENV: None, MODEL_SHA256_ENV: model_sha256, ALLOWED_HOSTS_ENV: ",".join(LOOPBACK_NAMES)}
    base = f"http://{host}:{port}"
    with (
        tempfile.TemporaryFile("w+b") as log,
        serve_in_background(bento_tag, port, host, log, env=env) as proc,
    ):
        ready = wait_until_ready(base, proc, timeout_s)
        if ready is not None:
            detail = f"{bento_tag} did not become ready: {ready}\n{_read_tail(log)}"
            return _parity_check(None, False, detail, tolerance)
        with httpx.Client(base_url=base, timeout=30.0, trust_env=False) as client:
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


def _confident_label(expected: Sequence[float], class_names: Sequence[str], tolerance: float) -> str | None:
    """The expected label, or None when the top two expected probabilities are within tolerance (a tie)."""
    ranked = sorted(range(len(expected)), key=lambda i: float(expected[i]), reverse=True)
    if len(ranked) > 1 and float(expected[ranked[0]]) - float(expected[ranked[1]]) <= 2 * tolerance:
        return None
    return class_names[ranked[0]]


def _read_tail(log: Any, lines: int = 20) -> str:
    log.flush()
    log.seek(0)
    return output_tail(log.read().decode("utf-8", "replace"), lines)
