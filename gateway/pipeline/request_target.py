"""The target stage: make the request unambiguous before access is decided.

Access is decided on the route table, so the path the router matched must
be the path the upstream receives, and there must be exactly one credential.
This middleware runs after routing and before the access check, and refuses
what two parsers could read two ways:

* dot-segments (``/v1/models/../../api/pull``, also percent-encoded as
  ``%2e%2e`` or ``..%2F``), empty segments (``//``), backslashes, control
  characters (``%00``, ``%0a``), double or broken percent-encoding in the
  path: an upstream or a proxy that normalises paths would otherwise route
  the request somewhere the gateway never authorised;
* a transfer coding other than plain ``chunked`` (aiohttp would frame the
  body by the chunks and ignore the rest of the coding);
* a repeated ``Authorization`` (which credential counts?) or
  ``Content-Encoding`` (how is the body encoded?);
* HTTP versions other than 1.0 and 1.1.

What goes upstream is built by :func:`upstream_target` from the same parsed
target the router used, so an absolute-form request line
(``GET http://host/v1/models``, which RFC 9112 section 3.2.2 says a server
must accept) forwards as ``/v1/models``.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from ..core.errors import GatewayError

# Headers whose repetition makes the request mean two things.
SINGLE_HEADERS = ("Authorization", "Content-Encoding")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Percent-encoding left after one decoding: encoded twice (a second decoder
# would turn %252e into '.'), or bytes that are not UTF-8 (which yarl keeps
# encoded and other parsers refuse or decode their own way).
_STILL_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def path_problem(raw_path: str, path: str) -> str | None:
    """Why a request path (as sent, and decoded) is refused, or None if it is canonical."""
    if _BAD_ESCAPE.search(raw_path):
        return "has a '%' that is not a percent-encoding"
    if _CONTROL.search(path):
        return "contains control characters"
    if "\\" in path:
        return "contains a backslash"
    if _STILL_ENCODED.search(path):
        return "is percent-encoded twice, or does not decode to UTF-8"
    segments = path.split("/")[1:]
    if any(s in (".", "..") for s in segments):
        return "contains a '.' or '..' segment"
    if any(not s for s in segments[:-1]):
        return "contains an empty segment ('//')"
    return None


def upstream_target(request: web.BaseRequest) -> str:
    """The path and query to send upstream: the origin-form of what the
    router matched (for an absolute-form target, without scheme and host)."""
    return request.rel_url.raw_path_qs


def setup_request_target(app: web.Application) -> None:
    app.middlewares.append(request_target)


@web.middleware
async def request_target(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.version.major != 1:
        raise GatewayError(
            505,
            f"HTTP/{request.version.major}.{request.version.minor} is not supported: use HTTP/1.1.",
            code="http_version_not_supported",
        )
    problem = path_problem(request.rel_url.raw_path, request.rel_url.path)
    if problem is not None:
        raise GatewayError(
            400,
            f"The request path {problem}; send the canonical path.",
            code="invalid_path",
        )
    coding = request.headers.get("Transfer-Encoding")
    if coding is not None and coding.strip().lower() != "chunked":
        # aiohttp frames by the final "chunked" and ignores the rest, so the
        # body would be read as something it is not (RFC 9112 section 6.1).
        raise GatewayError(
            501,
            "Only 'Transfer-Encoding: chunked' is supported.",
            code="unsupported_transfer_encoding",
        )
    for name in SINGLE_HEADERS:
        if len(request.headers.getall(name, ())) > 1:
            raise GatewayError(
                400,
                f"The request has more than one {name} header; send exactly one.",
                param=name,
                code="duplicate_header",
            )
    return await handler(request)
