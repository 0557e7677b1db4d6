"""ASGI middleware in front of the model service: an optional API key, and the upload routes' intake.

`ApiKeyGuard` answers 401 to requests without the configured key, except on the open paths (the
health probes).

`UploadGuard` reads the upload routes' requests itself, so that BentoML's own handling of them never runs:
BentoML 1.4 parses a multipart body into temporary files on disk and a pydantic model before the API code
runs, and fetches a URL given in place of a file. Handled here, an upload never touches the disk and is
parsed once, in memory; a request costs about 0.65 server CPU-ms less (1.63 against 0.95 at concurrency 32,
interleaved runs on 2 CPUs; benchmarks/serving.py's stand-in network costs about 0.5 an image). The guard answers, with a JSON `{"error": ...}`:
- 415 when an upload route is not sent `multipart/form-data`,
- 413 when the body is over `max_bytes` (by Content-Length, and by counting a streamed body),
- 503 (Retry-After) when this worker already holds `max_buffered_bytes` of request bodies,
- 400 for an empty or malformed body, a missing file field, or a field that is not a file;
and hands a good request's form to `answer` (the service), whose response it sends. BentoML's traffic
control, metrics and access log sit outside it and still see every request.
It also turns BentoML 1.4.39's 4xx body `[{"error": ...}]` into `{"error": ...}` (bentoml/BentoML#4232)
and lets `GET /metadata` reach the POST-only API route.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body: a file (`filename` given, maybe "") or a text field (None)."""

    data: bytes
    filename: str | None

    @property
    def is_file(self) -> bool:
        return self.filename is not None


Form = dict[str, list[Part]]  # the parts of a body by field name, in their order
Answer = Callable[[str, Form], Awaitable[Response]]  # (route, form) -> the response to send


class ApiKeyGuard:
    """Refuses (401) requests without `Authorization: Bearer <api_key>` or `X-API-Key: <api_key>`."""

    def __init__(self, app: ASGIApp, *, api_key: str, open_paths: tuple[str, ...] = ()):
        if not api_key:
            raise ValueError("ApiKeyGuard needs a non-empty key")
        self.app = app
        self.key = api_key.encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        await _reject(
            send,
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            [(b"www-authenticate", b'Bearer realm="medgate"')],
        )

    def _authorised(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        offered = [headers.get("x-api-key", ""), token.strip() if scheme.lower() == "bearer" else ""]
        # compare_digest on every offer: the time taken does not tell how much of a key matched.
        return any([hmac.compare_digest(offer.encode(), self.key) for offer in offered])  # noqa: C419 - no short-circuit


class UploadGuard:
    """Reads, checks and answers requests to the upload routes; `file_fields` maps each route to its file
    form field, `answer` gives a checked request's response."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, max_buffered_bytes: int, file_fields: dict[str, str],
        answer: Answer, get_routes: tuple[str, ...] = (),
    ):
        self.app = app
        self.answer = answer
        self.max_bytes = max_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered = 0  # bytes of the bodies this worker holds now (one event loop: no lock needed)
        self.file_fields = file_fields
        self.get_routes = get_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] == "GET" and path in self.get_routes:
            scope = {**scope, "method": "POST"}
        field = self.file_fields.get(path)
        if field is None or scope["method"] != "POST":  # BentoML answers: its 4xx bodies need unwrapping
            await self.app(scope, receive, _unwrap_error_body(send))
            return

        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "multipart/form-data":
            await _reject(
                send, 415, f"send the image as multipart/form-data with the file in field {field!r}"
            )
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _reject(
                send, 413, f"request body of {declared} bytes is over the limit of {self.max_bytes}"
            )
            return

        held = 0
        try:
            body = bytearray()
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                if self.buffered + len(chunk) > self.max_buffered_bytes:
                    await _reject(send, 503, f"the server holds {self.buffered} bytes of uploads, its limit is "
                                  f"{self.max_buffered_bytes}; retry later", [(b"retry-after", b"1")])
                    return
                self.buffered += len(chunk)
                held += len(chunk)
                body += chunk
                more = message.get("more_body", False)
                if len(body) > self.max_bytes:
                    await _reject(send, 413, f"request body is over the limit of {self.max_bytes} bytes")
                    return
            if not body:
                await _reject(send, 400, f"empty request body: send the image file in form field {field!r}")
                return
            form, problem = _read_form(headers.get("content-type", ""), body, field)
            del body  # the form holds the parts' bytes now
            if form is None:
                await _reject(send, 400, problem)
                return
            response = await self.answer(path, form)
            await response(scope, receive, send)
        finally:
            self.buffered -= held


def _read_form(content_type: str, body: bytearray, field: str) -> tuple[Form | None, str]:
    """The parts of the multipart `body` by field name, or None and what is wrong with it (for a file in
    `field`). Parsed by python-multipart, as Starlette (and so BentoML) parses forms."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        return None, "malformed multipart/form-data body: no boundary in its Content-Type"
    form: Form = {}
    name, filename, chunks = "", None, []
    header, value = bytearray(), bytearray()

    def header_end() -> None:
        nonlocal name, filename
        if header.lower() == b"content-disposition":
            options = parse_options_header(bytes(value))[1]
            name = options.get(b"name", b"").decode("latin-1")
            filename = options[b"filename"].decode("latin-1") if b"filename" in options else None
        header.clear()
        value.clear()

    def part_end() -> None:
        nonlocal name, filename
        form.setdefault(name, []).append(Part(b"".join(chunks), filename))
        name, filename = "", None
        chunks.clear()

    try:
        parser = MultipartParser(boundary, {
            "on_header_field": lambda data, start, end: header.extend(data[start:end]),
            "on_header_value": lambda data, start, end: value.extend(data[start:end]),
            "on_header_end": header_end,
            "on_part_data": lambda data, start, end: chunks.append(bytes(memoryview(data)[start:end])),
            "on_part_end": part_end,
        })
        parser.write(body)
        parser.finalize()
    except Exception:  # noqa: BLE001 - python-multipart raises several types for a broken body
        return None, "malformed multipart/form-data body"
    if field not in form:
        return None, f"missing form field {field!r} (got {sorted(form) or 'no fields'})"
    if not all(part.is_file for part in form[field]):
        return None, f"form field {field!r} must be a file upload, not text"
    return form, ""


async def _reject(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _unwrap_error_body(send: Send) -> Send:
    """Rewrites a 4xx JSON body `[{"error": ...}]` (BentoML 1.4.39) to `{"error": ...}`."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], dict):
            body = json.dumps(parsed[0]).encode()
            headers = MutableHeaders(raw=list(start.get("headers", [])))
            headers["content-length"] = str(len(body))
            start = {**start, "headers": headers.raw}
        await send(start)
        await send({"type": "http.response.body", "body": body})

    return wrapped
