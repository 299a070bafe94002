"""Upstreams: routing by model, header hygiene, auth, and the shared keep-alive client session.

One `Upstreams` per app (`app[UPSTREAMS]`), created in the app's cleanup context. The forwarding
handler and the shadow path both send through it, so replays reuse the same connection pool,
timeouts and auth rules as the primary traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from proxy.config import Config, UpstreamConfig
from proxy.metrics import OTHER_MODEL

# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones aiohttp must compute itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: the upstream and the bounded `model_name` label value."""

    upstream: UpstreamConfig
    model_name: str


def end_to_end(headers: Mapping[str, str], drop: frozenset[str] = HOP_BY_HOP) -> CIMultiDict[str]:
    """Copy `headers` without hop-by-hop ones (incl. those named in `Connection`) and `drop`."""
    named = {
        token.strip().lower()
        for value in _all(headers, "connection")
        for token in value.split(",")
        if token.strip()
    }
    out: CIMultiDict[str] = CIMultiDict()
    items = headers.items()
    for key, value in items:
        lower = key.lower()
        if lower not in drop and lower not in named:
            out.add(key, value)
    return out


def _all(headers: Mapping[str, str], key: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values: list[str] = getall(key, [])
        return values
    value = headers.get(key)
    return [value] if value is not None else []


class Upstreams:
    """The configured upstreams, their routing table and the shared `aiohttp.ClientSession`."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self._config = config
        self._by_name = {u.name: u for u in config.upstreams}
        self._by_model = {m: u for u in config.upstreams for m in u.models}
        self.session = session

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    @property
    def default(self) -> UpstreamConfig:
        return self._by_name[self._config.default_upstream]

    def upstream_for(self, name: str) -> UpstreamConfig:
        """The upstream config: resolved base_url, key, timeouts, auth. KeyError if unknown."""
        return self._by_name[name]

    def route(self, model: object) -> Route:
        """Route by the body's `model`: its configured upstream, else the default ("other")."""
        if isinstance(model, str):
            upstream = self._by_model.get(model)
            if upstream is not None:
                return Route(upstream, model)
        return Route(self.default, OTHER_MODEL)

    def url(self, upstream: UpstreamConfig, path: str, query: str = "") -> str:
        """`path` is the part after /v1 (e.g. "/chat/completions"); query without '?'."""
        return f"{upstream.base_url}{path}" + (f"?{query}" if query else "")

    def request_headers(
        self, upstream: UpstreamConfig, client_headers: Mapping[str, str]
    ) -> CIMultiDict[str]:
        """Headers to send upstream: the client's end-to-end headers with the upstream's auth.

        `inject` replaces Authorization with the configured key; `passthrough` keeps the client's.
        Use this for replays too, with the primary request's headers.
        """
        headers = end_to_end(client_headers, _REQUEST_DROP)
        if upstream.auth == "inject" and upstream.api_key is not None:
            headers.popall("Authorization", None)
            headers["Authorization"] = f"Bearer {upstream.api_key}"
        return headers

    def auth_headers(
        self, upstream: UpstreamConfig, client_headers: Mapping[str, str]
    ) -> dict[str, str]:
        """Only the Authorization header a replay should carry (may be empty)."""
        if upstream.auth == "inject" and upstream.api_key is not None:
            return {"Authorization": f"Bearer {upstream.api_key}"}
        value = client_headers.get("Authorization") or client_headers.get("authorization")
        return {"Authorization": value} if value else {}

    def client_timeout(self, upstream: UpstreamConfig) -> aiohttp.ClientTimeout:
        """connect and total; the first-byte limit is enforced by the caller around the headers."""
        t = upstream.timeouts
        return aiohttp.ClientTimeout(total=t.total, connect=t.connect, sock_connect=t.connect)


def new_session() -> aiohttp.ClientSession:
    """The keep-alive pool shared by all upstreams of one app.

    Bytes are forwarded as received: no automatic decompression, no default User-Agent/Accept
    headers added on top of the client's.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60.0),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        read_bufsize=2**16,
    )
