"""What a hostile web page or network can make a browser send, refused before any route runs.

DESIGN §10: bound to loopback without a token, Keel is still reachable from every web page the
user opens. Three rules close that door, checked from the request line and headers alone:

- ``Host`` must name Keel (``KEEL_ALLOWED_HOSTS``): a DNS-rebinding page reaches Keel under
  its own host name, so its requests carry a foreign ``Host`` (421 ``host_not_allowed``).
- A browser request from another origin (its ``Origin`` header, or ``Sec-Fetch-Site`` when a
  browser sends no ``Origin``) is refused unless ``KEEL_CORS_ORIGINS`` lists the origin; then
  it gets proper CORS answers, preflights included (403 ``origin_not_allowed``).
- A request body on ``/v1/*`` must be JSON: HTML forms and ``text/plain`` fetches are the
  requests a page can send cross-site without a preflight (415 ``unsupported_media_type``).

The policy is pure (headers in, a verdict out); ``KeelMiddleware`` applies it in its one pass
over the headers, so the hot path pays for no extra middleware layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from app.errors import HostNotAllowed, KeelError, OriginNotAllowed, UnsupportedMediaType

# The headers a browser script may read on a CORS response besides the safelisted ones.
_EXPOSED = (
    b"X-Request-Id, ETag, Location, Retry-After, Idempotent-Replayed, X-Keel-Target, "
    b"X-Keel-Attempts, x-should-retry, X-Keel-Dry-Run"
)
_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE"
_PREFLIGHT_MAX_AGE = b"600"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Headers the policy reads; KeelMiddleware collects them in its single pass.
HEADERS = frozenset(
    {
        b"host",
        b"origin",
        b"content-type",
        b"transfer-encoding",
        b"sec-fetch-site",
        b"sec-fetch-mode",
        b"access-control-request-method",
        b"access-control-request-headers",
    }
)

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Preflight:
    """A CORS preflight from an allowed origin: answer 204 with these headers."""

    headers: Headers


@dataclass(frozen=True, slots=True)
class Verdict:
    """Nothing to refuse; ``cors`` holds the headers to add to the response, if any."""

    cors: Headers | None = None


_PASS = Verdict()


class EdgePolicy:
    def __init__(self, allowed_hosts: Iterable[str], cors_origins: Iterable[str]) -> None:
        hosts = {h.strip().lower() for h in allowed_hosts if h.strip()}
        self.any_host = "*" in hosts
        self.hosts = frozenset(_strip_brackets(h) for h in hosts)
        origins = {o.strip().lower().rstrip("/") for o in cors_origins if o.strip()}
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)

    def check(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> KeelError | Preflight | Verdict:
        host = headers.get("host")
        if host is not None and not self.any_host and host_name(host) not in self.hosts:
            return HostNotAllowed(
                "This Host header does not name this server; add it to KEEL_ALLOWED_HOSTS."
            )
        verdict = _PASS
        origin = headers.get("origin")
        if origin is not None:
            if not _same_origin(origin, host):
                if not self.origin_allowed(origin):
                    return OriginNotAllowed(
                        "Requests from this origin are refused; list it in KEEL_CORS_ORIGINS."
                    )
                if method == "OPTIONS" and "access-control-request-method" in headers:
                    return Preflight(self._preflight_headers(origin, headers))
                verdict = Verdict(_cors_headers(origin))
        elif headers.get("sec-fetch-site") in ("cross-site", "same-site") and headers.get(
            "sec-fetch-mode"
        ) not in (None, "navigate"):
            # A browser subresource request (img, script) from another site without Origin.
            return OriginNotAllowed("Cross-site requests are refused.")
        if method in _BODY_METHODS and path.startswith("/v1/"):
            refused = _body_media_type(headers)
            if refused is not None:
                return refused
        return verdict

    def origin_allowed(self, origin: str) -> bool:
        return self.any_origin or origin.lower().rstrip("/") in self.origins

    def _preflight_headers(self, origin: str, headers: Mapping[str, str]) -> Headers:
        out = [
            *_cors_headers(origin),
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-max-age", _PREFLIGHT_MAX_AGE),
        ]
        requested = headers.get("access-control-request-headers")
        if requested:
            # The origin is trusted with the API; which headers its client sends is its
            # business (the openai SDKs send their own x-stainless-* family).
            out.append((b"access-control-allow-headers", requested.encode("latin-1")))
        return out


def host_name(host: str) -> str:
    """``Host`` without its port, lower-case, IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _same_origin(origin: str, host: str | None) -> bool:
    """The page was served by Keel itself (the status page): its origin's authority is Host."""
    if host is None:
        return False
    _, sep, authority = origin.partition("://")
    return bool(sep) and authority.lower() == host.strip().lower()


def _cors_headers(origin: str) -> Headers:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", _EXPOSED),
        (b"vary", b"Origin"),
    ]


def _body_media_type(headers: Mapping[str, str]) -> UnsupportedMediaType | None:
    content_type = headers.get("content-type")
    if content_type is None:
        # A body-less POST (start a download, cancel a request) needs no type; a body does.
        length = headers.get("content-length", "0").strip()
        if length in ("", "0") and "transfer-encoding" not in headers:
            return None
    elif is_json(content_type):
        return None
    return UnsupportedMediaType("Send the request body as Content-Type: application/json.")


def is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )
