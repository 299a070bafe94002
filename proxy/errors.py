"""OpenAI-style error responses: every error the proxy itself produces goes through here.

`error_middleware` is the one mapping from exceptions to responses, on every route: a `ProxyError`
becomes its OpenAI-style body; an aiohttp HTTP error (405, 413 from aiohttp itself, ...) keeps its
status with an OpenAI-style body; anything else is a bug: logged at ERROR with its stack frames
(proxy/logs.py; never the exception's message, which could carry prompt text), counted in
`tbg_internal_errors_total{where}`, and answered 500 `internal_error`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter

log = logging.getLogger("proxy.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Bounded `where` label: the route a failing request matched (its canonical path's first segment).
WHERE = ("v1", "tbg", "metrics", "healthz", "readyz", "other")


class ProxyError(Exception):
    """An error the proxy answers itself, translated at the edge into an OpenAI error body.

    (An exception, so not a frozen dataclass: raising sets attributes like __traceback__.)
    """

    def __init__(self, status: int, message: str, type_: str, code: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.message = message
        self.type = type_
        self.code = code


def error_body(message: str, type_: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code}})


def error_response(error: ProxyError) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    response = web.Response(
        status=error.status,
        body=error_body(error.message, error.type, error.code),
        content_type="application/json",
        headers=headers,
    )
    if error.status == 408:
        response.force_close()  # the rest of a slow body is not waited for
    return response


def bad_request(message: str, code: str = "invalid_request") -> ProxyError:
    return ProxyError(400, message, "invalid_request_error", code)


def unauthorized() -> ProxyError:
    message = "Invalid or missing API key for this proxy."
    return ProxyError(401, message, "invalid_request_error", "invalid_api_key")


def body_timeout(seconds: float) -> ProxyError:
    return ProxyError(
        408,
        f"The request body did not arrive within {seconds:g} s.",
        "invalid_request_error",
        "request_timeout",
    )


def too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"Request body exceeds the proxy's limit of {limit} bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def bad_gateway(upstream: str, kind: str) -> ProxyError:
    """Names the upstream by its configured name only: its address stays in the proxy's log."""
    return ProxyError(
        502, f"Upstream {upstream!r} failed ({kind}).", "upstream_error", f"upstream_{kind}"
    )


def gateway_timeout(upstream: str) -> ProxyError:
    return ProxyError(
        504, f"Upstream {upstream!r} timed out.", "upstream_error", "upstream_timeout"
    )


def unavailable(message: str) -> ProxyError:
    return ProxyError(503, message, "server_error", "unavailable")


def not_found(path: str) -> ProxyError:
    return ProxyError(404, f"No route for {path}.", "invalid_request_error", "not_found")


def internal_error() -> ProxyError:
    return ProxyError(500, "The proxy hit an internal error.", "server_error", "internal_error")


def _from_http(exc: web.HTTPException) -> ProxyError:
    type_ = "server_error" if exc.status >= 500 else "invalid_request_error"
    code = exc.reason.lower().replace(" ", "_") if exc.reason else "http_error"
    return ProxyError(exc.status, f"{exc.reason}.", type_, code)


def where_of(request: web.Request) -> str:
    """The bounded label for a request: never the raw path (10,000 paths must not make series)."""
    route = request.match_info.route
    canonical = route.resource.canonical if route.resource is not None else ""
    first = canonical.lstrip("/").split("/", 1)[0]
    return first if first in WHERE else "other"


def error_middleware(internal: Counter) -> Middleware:
    """Build the middleware around the app's `tbg_internal_errors_total{where}` counter
    (proxy.metrics; `where` is one of WHERE for requests, tap or shadow for the background paths)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ProxyError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects and the like are responses, not errors
            return error_response(_from_http(exc))
        except (asyncio.CancelledError, ConnectionResetError):
            raise  # the client went away: nothing to answer
        except Exception:
            where = where_of(request)
            internal.labels(where).inc()
            log.exception("internal error", extra={"where": where, "method": request.method})
            return error_response(internal_error())

    return middleware
