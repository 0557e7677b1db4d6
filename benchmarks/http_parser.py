"""CPU time per request of uvicorn's two HTTP protocols on the model service's request (a benchmark, not a test).

The request is what `benchmarks/serving.py` sends: a multipart POST of a 64x64 float32 `.npy` (16 KB),
answered with the service's JSON by a minimal ASGI app that reads the whole body. Each protocol is fed
the request's bytes through an in-memory transport (no sockets, no other process), in interleaved rounds,
so only the parsing and answering differ: h11 (pure Python, uvicorn's fallback) against httptools (C, which
uvicorn, and with it BentoML's server, takes where it is installed; a medgate dependency).

    python benchmarks/http_parser.py [--requests 2000] [--rounds 5]

Measured 2026-12-05 on the 2-CPU machine: h11 0.109-0.116 CPU-ms per request, httptools 0.029-0.032.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
from serving import BOUNDARY, upload_body  # (serving puts the project, and with it tests.images, on the path)
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from tests.images import npy_bytes

ANSWER = b'{"label":"normal","probabilities":{"normal":0.5,"lesion":0.5},"decision":"normal","model_version":"m:1"}'


def service_request() -> bytes:
    body = upload_body(npy_bytes(np.zeros((64, 64), np.float32)), "image")
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def reading_app(scope, receive, send) -> None:  # noqa: ANN001 - the ASGI signature
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


class MemoryTransport(asyncio.Transport):
    """Takes what the protocol writes and counts it; never pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 3000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


async def cpu_ms_per_request(protocol: type, request: bytes, requests: int) -> tuple[float, int]:
    """CPU-ms per request of `requests` keep-alive requests on one connection, and the bytes answered."""
    config = Config(app=reading_app, log_level="warning", access_log=False)
    config.load()
    connection = protocol(config=config, server_state=ServerState(), app_state={})
    transport = MemoryTransport()
    connection.connection_made(transport)
    chunks = [request[i:i + 65536] for i in range(0, len(request), 65536)]  # as a socket's reads deliver it
    started = time.process_time()
    for _ in range(requests):
        for chunk in chunks:
            connection.data_received(chunk)
        for _ in range(4):  # the request's task: read the body, answer
            await asyncio.sleep(0)
    return (time.process_time() - started) * 1000 / requests, transport.written


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    request = service_request()
    protocols = {"h11": H11Protocol, "httptools": HttpToolsProtocol}
    for protocol in protocols.values():  # warm-up
        await cpu_ms_per_request(protocol, request, 200)
    figures: dict[str, list[float]] = {name: [] for name in protocols}
    for _ in range(args.rounds):
        for name, protocol in protocols.items():
            ms, written = await cpu_ms_per_request(protocol, request, args.requests)
            if written < args.requests * len(ANSWER):
                raise SystemExit(f"{name}: answered {written} bytes for {args.requests} requests: not every request completed")
            figures[name].append(ms)
    print(f"request: {len(request)} bytes; {args.requests} requests a round, {args.rounds} rounds, interleaved")
    for name, values in figures.items():
        print(f"  {name:<10} {min(values):.3f}-{max(values):.3f} CPU-ms per request")
    print(f"  h11 / httptools: {min(figures['h11']) / min(figures['httptools']):.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
