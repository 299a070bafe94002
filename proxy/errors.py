"""OpenAI-style error responses: every error the proxy itself produces goes through here."""

from __future__ import annotations

import orjson
from aiohttp import web


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
    return web.Response(
        status=error.status,
        body=error_body(error.message, error.type, error.code),
        content_type="application/json",
        headers=headers,
    )


def bad_request(message: str, code: str = "invalid_request") -> ProxyError:
    return ProxyError(400, message, "invalid_request_error", code)


def unauthorized() -> ProxyError:
    message = "Invalid or missing API key for this proxy."
    return ProxyError(401, message, "invalid_request_error", "invalid_api_key")


def too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"Request body exceeds the proxy's limit of {limit} bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def bad_gateway(upstream: str, kind: str) -> ProxyError:
    return ProxyError(
        502, f"Upstream {upstream!r} failed ({kind}).", "upstream_error", f"upstream_{kind}"
    )


def gateway_timeout(upstream: str) -> ProxyError:
    return ProxyError(
        504, f"Upstream {upstream!r} timed out.", "upstream_error", "upstream_timeout"
    )


def unavailable(message: str) -> ProxyError:
    return ProxyError(503, message, "server_error", "unavailable")
