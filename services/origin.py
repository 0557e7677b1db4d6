"""Which browsers' requests a server on this machine answers: DNS rebinding and cross-site requests refused.

A server on 127.0.0.1 without an API key is reachable by every web page the operator opens: a page
may POST a multipart form to it without a CORS preflight, and a page on a rebound DNS name
(attacker.example resolving to 127.0.0.1) may read its answers. A request is answered only when its
`Host` names this server (a loopback name, the bound address, or a configured name), and, when a
browser says where it comes from (`Origin`, `Sec-Fetch-Site`), only when that is one of those names.
Clients that are not browsers (curl, httpx, Prometheus) send neither header and are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# Set by `medgate serve` for its backends: the names a Bento answers to (comma-separated; unset: any).
ALLOWED_HOSTS_ENV = "MEDGATE_ALLOWED_HOSTS"


def allowed_hosts(bound_host: str, configured: Iterable[str] = ()) -> frozenset[str]:
    """The host names this server answers to: the loopback names, the bound address, `configured`."""
    names = {*LOOPBACK_NAMES, bound_host, *configured}
    return frozenset(n.strip().strip("[]").lower().rstrip(".") for n in names if n.strip())


def _hostname(authority: str) -> str | None:
    """The host of a `Host` header value or an origin's authority ("name:port", "[::1]:3000")."""
    if any(c in authority for c in "@/\\?#"):
        return None
    try:
        host = urlsplit(f"//{authority.strip()}").hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


def refusal(headers: Mapping[str, str], allowed: frozenset[str]) -> str | None:
    """Why a request with these headers is refused (None: it is answered). Header names are matched
    case-insensitively when `headers` is a case-insensitive mapping (aiohttp's, Starlette's)."""
    host = _hostname(headers.get("Host", ""))
    if host not in allowed:
        return f"Host {headers.get('Host', '')!r} is not a name of this server ({', '.join(sorted(allowed))})"
    if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return "cross-site requests from a web page are refused"
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin) if origin != "null" else None
        if parts is None or parts.scheme not in ("http", "https") or _hostname(parts.netloc) not in allowed:
            return f"requests from the web page origin {origin!r} are refused"
    return None


class OriginGuard:
    """ASGI middleware answering 403 (JSON) to every HTTP request `refusal` refuses."""

    def __init__(self, app: Any, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            from starlette.datastructures import Headers
            from starlette.responses import JSONResponse

            why = refusal(Headers(scope=scope), self.allowed)
            if why is not None:
                await JSONResponse({"error": f"refused: {why}"}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def read_allowed_hosts(value: str | None) -> frozenset[str] | None:
    """The names in ALLOWED_HOSTS_ENV's comma-separated value (None when unset: no check)."""
    return allowed_hosts("127.0.0.1", value.split(",")) if value else None
