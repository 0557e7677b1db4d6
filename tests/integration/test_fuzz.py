"""A short fuzz of `/predict` over HTTP on the session server: random and mutated bodies never get a 5xx,
and the server keeps serving. Bounded by REQUESTS and TIME_LIMIT_S; the seed is fixed, so a failure
replays (the failing case's name is in the message)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import numpy as np

from tests.images import dicom_bytes, grey_image, jpeg_bytes, npy_bytes, png_bytes

SEED = 20_240_611
REQUESTS = 240
TIME_LIMIT_S = 60
BOUNDARY = "fuzz-boundary-7f3a"


def valid_files() -> dict[str, bytes]:
    image = grey_image(seed=3, size=24)
    return {
        "npy": npy_bytes(image),
        "npy-float": npy_bytes(image.astype(np.float32) / 255),
        "png": png_bytes(image),
        "jpeg": jpeg_bytes(image),
        "dicom": dicom_bytes(image.astype(np.int16) * 4),
    }


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of `data` and its name."""
    buf = bytearray(data)
    kind = rng.choice(["flip", "truncate", "insert", "duplicate", "zero-run", "npy-header"])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)) :]
    elif kind == "insert":
        at = rng.randrange(len(buf))
        buf[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == "duplicate":
        start = rng.randrange(len(buf))
        buf += buf[start : start + rng.randint(1, 512)]
    elif kind == "zero-run":
        start = rng.randrange(len(buf))
        buf[start : start + rng.randint(1, 256)] = bytes(min(256, len(buf) - start))
    elif kind == "npy-header" and data.startswith(b"\x93NUMPY"):
        shape = rng.choice(["(100000, 100000)", "(-1, 24)", "()", "(24, 24, 24, 24)", "(0, 24)", "(24,)"])
        descr = rng.choice(["'|u1'", "'<f8'", "'|O'", "'<U5'", "'>i4'", "'|V8'", "'<c16'", "'|b1'"])
        text = re.sub(rb"'shape': \([^)]*\)", f"'shape': {shape}".encode(), bytes(buf))
        buf = bytearray(re.sub(rb"'descr': '[^']*'", f"'descr': {descr}".encode(), text))
    return kind, bytes(buf)


def multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart/form-data body of (field, file name or None for a text field, content)."""
    out = b""
    for field, filename, content in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def cases(rng: random.Random) -> Iterator[tuple[str, Callable[[httpx.Client], httpx.Response]]]:
    """Endless (name, request) pairs: mutated images, random bytes, broken multipart, odd headers."""
    files = valid_files()
    form = f"multipart/form-data; boundary={BOUNDARY}"

    def raw(body: bytes, content_type: str | None) -> Callable[[httpx.Client], httpx.Response]:
        headers = {"content-type": content_type} if content_type is not None else {}
        return lambda client: client.post("/predict", content=body, headers=headers)

    while True:
        fmt = rng.choice(sorted(files))
        pick = rng.random()
        if pick < 0.5:
            kind, data = mutate(files[fmt], rng)
            yield f"{fmt}/{kind}", raw(multipart([("image", "upload", data)]), form)
        elif pick < 0.6:
            data = rng.randbytes(rng.choice([1, 7, 100, 5000]))
            yield "random-file", raw(multipart([("image", "x.bin", data)]), form)
        elif pick < 0.7:
            body = bytearray(multipart([("image", "u.npy", files[fmt])]))
            for _ in range(rng.randint(1, 8)):  # damage the framing, not only the file
                body[rng.randrange(min(len(body), 200))] = rng.randrange(256)
            yield f"{fmt}/broken-framing", raw(bytes(body), form)
        elif pick < 0.8:
            content_type = rng.choice(
                [None, "application/json", "text/plain", "multipart/form-data", "multipart/form-data; boundary=",
                 "multipart/form-data; boundary=" + "b" * 300, "application/x-www-form-urlencoded", "image/png"]
            )  # fmt: skip
            yield f"content-type {content_type}", raw(rng.randbytes(rng.randint(0, 2000)), content_type)
        elif pick < 0.9:
            field = rng.choice(["image", "images", "Image", "image\x00", "é", ""])
            name = rng.choice([None, "", "../../etc/passwd", "x" * 5000, "ünïcödé.png", 'a"b.npy'])
            parts = [(field, name, files[fmt])] * rng.randint(1, 3)
            yield f"fields {field!r}/{name!r:.20}", raw(multipart(parts), form)
        else:
            query = rng.choice(["?image=1", "?x=" + "%" * 10, "?" + "a=b&" * 200])
            headers = {"content-type": form, rng.choice(["X-Forwarded-For", "Range", "Expect", "Accept"]): "1" * rng.randint(1, 2000)}
            body = multipart([("image", "a.npy", files[fmt])])
            yield f"query/headers {query[:12]}", lambda c, q=query, h=headers, b=body: c.post(f"/predict{q}", content=b, headers=h)


def test_predict_fuzz_never_answers_5xx_and_the_server_lives_on(served):
    client: httpx.Client = served["client"]
    rng = random.Random(SEED)
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    deadline = time.monotonic() + TIME_LIMIT_S
    for count, (name, send) in enumerate(cases(rng)):
        if count >= REQUESTS or time.monotonic() > deadline:
            break
        resp = send(client)
        statuses[resp.status_code] += 1
        if resp.status_code >= 500:
            server_errors.append(f"{name}: HTTP {resp.status_code} {resp.text[:200]}")
        elif resp.status_code >= 400:  # every refusal says why: the service in JSON, the proxy's HTTP layer in text
            json_answer = resp.headers.get("content-type", "").startswith("application/json")
            assert resp.json()["error"] if json_answer else resp.text, f"{name}: HTTP {resp.status_code} without a reason"
    assert not server_errors, server_errors[:10]
    assert sum(statuses.values()) >= 100, f"only {sum(statuses.values())} requests in {TIME_LIMIT_S} s"
    assert statuses[200] > 0 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 0, statuses
    # Alive after: probes, a real prediction, and the same process.
    assert client.get("/readyz").status_code == 200
    ok = client.post("/predict", files={"image": ("a.npy", npy_bytes(grey_image(seed=1, size=24)))})
    assert ok.status_code == 200, ok.text
    assert served["proc"].poll() is None
    print(f"\nfuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
