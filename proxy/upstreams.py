"""Upstreams: routing by model, header hygiene, auth, and the shared keep-alive client session.

One `Upstreams` per app (`app[UPSTREAMS]`), created in the app's cleanup context. The forwarding
handler and the shadow path both send through it (replays by its aiohttp session) with the same
timeouts and auth rules as the primary traffic.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.config import Config, UpstreamConfig
from proxy.h1 import Endpoint, Limits, Pool
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
# x-tbg-replay: the client's replay choice is for the proxy alone (proxy/shadow/optout.py).
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect", "x-tbg-replay"}
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
_RAW_REQUEST_DROP = frozenset(h.encode() for h in _REQUEST_DROP)
_RAW_RESPONSE_DROP = frozenset(h.encode() for h in RESPONSE_DROP)
_TARGET_CACHE = 1024  # request targets remembered per app (paths are client-chosen: bounded)
# RFC 3986 pchar minus the percent sign: a decoded segment is re-encoded so the upstream sees it as
# one segment, never a separator, query, fragment or a second round of percent-decoding.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"


class PathEscape(ValueError):
    """A request path whose tail would leave the upstream's base_url (`.`/`..` segments)."""


def normalised_tail(tail: str) -> str:
    """The decoded path after /v1 (e.g. "/chat/completions"), re-encoded segment by segment.

    aiohttp hands handlers the tail percent-decoded (`%2e%2e` -> `..`, `%2f` -> `/`), so a dot
    segment here is one the client spelled in any of those ways; joined to base_url and resolved,
    it would climb out of it. Raises PathEscape for any `.` or `..` segment (`\\` separating too).
    """
    segments = tail.split("/")
    # A backslash is a separator to some servers (IIS): `..\` counts as a dot segment too.
    if any(seg in (".", "..") for seg in tail.replace("\\", "/").split("/")):
        raise PathEscape(tail)
    return "/".join(quote(seg, safe=_SEGMENT_SAFE) for seg in segments)


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


def _connection_named(raw: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    return frozenset(
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    )


def end_to_end_raw(
    raw: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes] = _RAW_RESPONSE_DROP
) -> list[tuple[str, str]]:
    """`end_to_end` over raw header pairs (as parsed off the wire), decoded like aiohttp does;
    a list, which aiohttp's Response turns into its header multidict in one go."""
    lowered = [name.lower() for name, _ in raw]
    if b"connection" in lowered:
        drop = drop | _connection_named(raw)
    return [
        (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for lower, (name, value) in zip(lowered, raw, strict=True)
        if lower not in drop
    ]


def _all(headers: Mapping[str, str], key: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values: list[str] = getall(key, [])
        return values
    value = headers.get(key)
    return [value] if value is not None else []


class Upstreams:
    """The configured upstreams, their routing table and the shared `aiohttp.ClientSession`."""

    def __init__(
        self, config: Config, session: aiohttp.ClientSession, pool: Pool | None = None
    ) -> None:
        self._config = config
        self._by_name = {u.name: u for u in config.upstreams}
        self._by_model = {m: u for u in config.upstreams for m in u.models}
        self.session = session
        self.pool = pool if pool is not None else Pool()  # the forwarding hot path's client
        self._endpoints = {u.name: endpoint_of(u.base_url) for u in config.upstreams}
        self._limits = {
            u.name: Limits(u.timeouts.connect, u.timeouts.first_byte, u.timeouts.total)
            for u in config.upstreams
        }
        self._auth = {
            u.name: b"Bearer " + u.api_key.encode("latin-1")
            for u in config.upstreams
            if u.auth == "inject" and u.api_key is not None
        }
        self._drop = {  # request headers never forwarded as the client sent them, per upstream
            u.name: _RAW_REQUEST_DROP | ({b"authorization"} if u.name in self._auth else set())
            for u in config.upstreams
        }
        self._targets: dict[tuple[str, str], str] = {}
        self._base_paths = {u.name: URL(u.base_url).raw_path.rstrip("/") for u in config.upstreams}
        self._origins = {u.name: str(URL(u.base_url).origin()) for u in config.upstreams}

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

    def endpoint(self, upstream: UpstreamConfig) -> Endpoint:
        return self._endpoints[upstream.name]

    def limits(self, upstream: UpstreamConfig) -> Limits:
        return self._limits[upstream.name]

    def target(self, upstream: UpstreamConfig, tail: str, raw_query: str = "") -> str:
        """The request target for a client's decoded path tail below /v1 and its query string as
        it arrived (still encoded): base_url's path + the tail, re-encoded so it cannot leave it
        (PathEscape otherwise). Only this ever builds a forwarded path from client input."""
        key = (upstream.name, tail)
        target = self._targets.get(key)
        if target is None:
            if len(self._targets) >= _TARGET_CACHE:
                self._targets.clear()
            target = self._base_paths[upstream.name] + normalised_tail(tail)
            self._targets[key] = target
        return f"{target}?{raw_query}" if raw_query else target

    def request_url(self, upstream: UpstreamConfig, tail: str, raw_query: str = "") -> URL:
        """`target` as an absolute URL for aiohttp's client, sent exactly as built."""
        return URL(
            self._origins[upstream.name] + self.target(upstream, tail, raw_query), encoded=True
        )

    def raw_request_headers(
        self,
        upstream: UpstreamConfig,
        client_headers: Iterable[tuple[bytes, bytes]],
        identity: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """`request_headers` over the client's raw header pairs; with `identity`, asks the upstream
        for an unencoded body (Accept-Encoding: identity) as the tap needs."""
        raw = tuple(client_headers)
        lowered = [name.lower() for name, _ in raw]
        drop = self._drop[upstream.name]
        if b"connection" in lowered:
            drop = drop | _connection_named(raw)
        if identity:
            drop = drop | {b"accept-encoding"}
        out = [pair for lower, pair in zip(lowered, raw, strict=True) if lower not in drop]
        auth = self._auth.get(upstream.name)
        if identity:
            out.append((b"Accept-Encoding", b"identity"))
        if auth is not None:
            out.append((b"Authorization", auth))
        return out

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


def endpoint_of(base_url: str) -> Endpoint:
    """Where the lean client connects for `base_url`, and the Host it sends (as aiohttp would)."""
    url = URL(base_url)
    host, port = url.raw_host, url.port
    assert host is not None and port is not None  # config validated an absolute http(s) URL
    host_port = url.host_port_subcomponent
    assert host_port is not None
    tls = url.scheme == "https"
    return Endpoint(
        host=host.strip("[]"),
        port=port,
        host_header=host_port.encode("idna" if not host_port.isascii() else "ascii"),
        ssl=ssl.create_default_context() if tls else None,
        server_hostname=url.host if tls else None,
    )


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
