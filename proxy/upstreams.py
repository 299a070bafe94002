"""Upstreams: routing by model, header hygiene, auth, and the one keep-alive pool (proxy/h1.py).

One `Upstreams` per process (`app[UPSTREAMS]` in the proxy, created in the app's cleanup context;
its own in the shadow worker process). Forwarding, HEAD, the merged /v1/models, the readiness
probes, replays and the /metrics poller all send through its `pool`, with the same connection
reuse, time limits (`Limits`: connect / first byte / total), header filter and auth rules.

An upstream with `discovery.dns` has an `EndpointSet` (proxy/endpoints.py), filled by
proxy/discovery.py: requests go to its addresses directly (`choose`, `endpoint_for`), replays and
the /metrics poll to a named one (`fetch(..., pod=)`). Routing by model also reads the
`ModelCatalog` (proxy/catalog.py) that model discovery fills.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from urllib.parse import quote

from yarl import URL

from proxy.catalog import ModelCatalog
from proxy.config import Config, UpstreamConfig
from proxy.endpoints import EndpointSet, Member, address_of, endpoint_at
from proxy.h1 import ConnectFailed, Endpoint, Limits, Pool, Reply
from proxy.inflight import InFlight
from proxy.metrics import OTHER_MODEL

# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones the client or server computes itself.
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
_REQUEST_DROP = frozenset(
    h.encode() for h in HOP_BY_HOP | {"host", "content-length", "expect", "x-tbg-replay"}
)
RESPONSE_DROP = frozenset(h.encode() for h in HOP_BY_HOP | {"content-length"})
# A HEAD response keeps its Content-Length: the length the GET would have, with no body here.
HEAD_RESPONSE_DROP = frozenset(h.encode() for h in HOP_BY_HOP)
_TARGET_CACHE = 1024  # request targets remembered per app (paths are client-chosen: bounded)
_PINNED_CACHE = 1024  # endpoints of named pods not in this process's sets (the worker process)
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


def _connection_named(raw: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    return frozenset(
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    )


def _dropping(
    raw: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> tuple[list[bytes], frozenset[bytes]]:
    """The header filter's one rule, requests and responses alike: (each header's lower-case
    name, the names that go) — hop-by-hop ones in `drop`, plus those named in `Connection`."""
    lowered = [name.lower() for name, _ in raw]
    if b"connection" in lowered:
        drop = drop | _connection_named(raw)
    return lowered, drop


def end_to_end(
    raw: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """`raw` header pairs as on the wire, without those `_dropping` names."""
    lowered, drop = _dropping(raw, drop)
    return [pair for lower, pair in zip(lowered, raw, strict=True) if lower not in drop]


def end_to_end_raw(
    raw: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes] = RESPONSE_DROP
) -> list[tuple[str, str]]:
    """`end_to_end` for a response relayed by aiohttp's server, decoded like its parser does, in
    the same pass; a list, which its Response turns into its header multidict in one go."""
    lowered, drop = _dropping(raw, drop)
    return [
        (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for lower, (name, value) in zip(lowered, raw, strict=True)
        if lower not in drop
    ]


def _wire(value: str) -> bytes:
    """A header value aiohttp's server decoded, back to its bytes."""
    return value.encode("utf-8", "surrogateescape")


class Upstreams:
    """The configured upstreams, their routing table and the process's one connection pool.

    `pool` is what `new_session()` returns; closing it (`await pool.close()`) is the owner's job.
    """

    def __init__(self, config: Config, pool: Pool, in_flight: InFlight | None = None) -> None:
        self._config = config
        self._by_name = {u.name: u for u in config.upstreams}
        self._by_model = {m: u for u in config.upstreams for m in u.models}
        self.pool = pool
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
            u.name: _REQUEST_DROP | ({b"authorization"} if u.name in self._auth else set())
            for u in config.upstreams
        }
        self._targets: dict[tuple[str, str], str] = {}
        self._base_paths = {u.name: URL(u.base_url).raw_path.rstrip("/") for u in config.upstreams}
        # The fleet: endpoint sets (filled by proxy/discovery.py) and discovered models.
        pod_load = in_flight if in_flight is not None else InFlight()  # none: nothing counted
        self._sets = {
            u.name: EndpointSet(
                u.name,
                self._endpoints[u.name],
                load=partial(pod_load.pod, u.name),
                down_seconds=u.discovery.down_seconds,
                max_labels=u.discovery.max_pod_labels,
            )
            for u in config.upstreams
            if u.discovery.dns
        }
        self._pinned: dict[tuple[str, str], Endpoint] = {}
        self.catalog = ModelCatalog(
            [u.name for u in config.upstreams], {m: u.name for u, m in _pins(config)}
        )
        self._discovering = any(u.model_discovery.enabled for u in config.upstreams)

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
            if upstream is None and self._discovering:
                name = self.catalog.upstream_of(model)
                upstream = self._by_name[name] if name is not None else None
            if upstream is not None:
                return Route(upstream, model)
        return Route(self.default, OTHER_MODEL)

    def api_path(self, upstream: UpstreamConfig, path: str) -> str:
        """The request target of a path of the proxy's own below base_url (e.g. "/models")."""
        return self._base_paths[upstream.name] + path

    def root_path(self, upstream: UpstreamConfig, path: str) -> str:
        """The request target of `path` beside base_url's `/v1` (e.g. "/metrics")."""
        return self._base_paths[upstream.name].removesuffix("/v1") + path

    async def fetch(
        self,
        upstream: UpstreamConfig,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        *,
        within: float | None = None,
        pod: str | None = None,
        fallback: bool = True,
    ) -> Reply:
        """One whole exchange with `upstream` through the pool, under its time limits, each cut
        to `within` seconds when given. Raises proxy.h1.UpstreamError (its `kind` says how).

        With discovered endpoints: to `pod` when given (a replay to its primary's pod, a poll of
        one pod's /metrics), else to `choose`'s pick; an address that refuses the connection is
        marked down and, with `fallback`, the exchange goes once to another address."""
        limits = self._limits[upstream.name]
        if within is not None:
            limits = limits.capped(within)
        endpoints = self._sets.get(upstream.name)
        if endpoints is None and pod is None:
            endpoint = self._endpoints[upstream.name]
            return await self.pool.fetch(endpoint, limits, method, target, headers, body)
        member = endpoints.get(pod) if endpoints is not None and pod is not None else None
        if member is None and pod is None and endpoints is not None:
            member = endpoints.pick()
        first = member.endpoint if member is not None else self.endpoint_for(upstream, pod)
        try:
            return await self.pool.fetch(first, limits, method, target, headers, body)
        except ConnectFailed:
            if member is not None and endpoints is not None:
                endpoints.refused(member)
            if not fallback:
                raise
            # Nothing reached the address: once more on another one (or base_url's name).
            other = endpoints.pick(avoid=member.pod if member else pod) if endpoints else None
            second = other.endpoint if other is not None else self._endpoints[upstream.name]
            if second == first:
                raise
            return await self.pool.fetch(second, limits, method, target, headers, body)

    # -- the fleet (proxy/endpoints.py) ---------------------------------------------------------

    def endpoint_set(self, name: str) -> EndpointSet | None:
        """The discovered addresses of upstream `name`; None for a static base_url."""
        return self._sets.get(name)

    def endpoint_sets(self) -> tuple[EndpointSet, ...]:
        return tuple(self._sets.values())

    def choose(self, upstream: UpstreamConfig, avoid: str | None = None) -> Member | None:
        """The address the next request to `upstream` goes to; None: base_url as configured (a
        static upstream, or no address resolved yet)."""
        endpoints = self._sets.get(upstream.name)
        return endpoints.pick(avoid) if endpoints is not None else None

    def sent_to(self, upstream: UpstreamConfig, member: Member) -> None:
        """Count one request `member` answered (tbg_pod_requests_total)."""
        self._sets[upstream.name].sent(member)

    def endpoint_for(self, upstream: UpstreamConfig, pod: str | None) -> Endpoint:
        """Where a request for `pod` connects: that address of the set, or, in a process that
        does not resolve the name itself (the shadow worker process), the address the pod key
        names with the upstream's Host and SNI; base_url's endpoint for None or a bad key."""
        base = self._endpoints[upstream.name]
        if pod is None:
            return base
        endpoints = self._sets.get(upstream.name)
        member = endpoints.get(pod) if endpoints is not None else None
        if member is not None:
            return member.endpoint
        key = (upstream.name, pod)
        endpoint = self._pinned.get(key)
        if endpoint is None:
            address = address_of(pod)
            if address is None:
                return base
            if len(self._pinned) >= _PINNED_CACHE:
                self._pinned.clear()
            endpoint = self._pinned[key] = endpoint_at(base, *address)
        return endpoint

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

    def raw_request_headers(
        self,
        upstream: UpstreamConfig,
        client_headers: Iterable[tuple[bytes, bytes]],
        identity: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Headers to send upstream: the client's end-to-end headers (`end_to_end`) with the
        upstream's auth (`inject` replaces Authorization with the configured key; `passthrough`
        keeps the client's); with `identity`, asks the upstream for an unencoded body
        (Accept-Encoding: identity) as the tap needs."""
        drop = self._drop[upstream.name]
        if identity:
            drop = drop | {b"accept-encoding"}
        out = end_to_end(tuple(client_headers), drop)
        auth = self._auth.get(upstream.name)
        if identity:
            out.append((b"Accept-Encoding", b"identity"))
        if auth is not None:
            out.append((b"Authorization", auth))
        return out

    def auth_headers(
        self, upstream: UpstreamConfig, client_headers: Mapping[str, str]
    ) -> list[tuple[bytes, bytes]]:
        """Only the Authorization header a replay or probe should carry (may be none): the
        injected key, else the client's (as aiohttp's server decoded it)."""
        auth = self._auth.get(upstream.name)
        if auth is not None:
            return [(b"Authorization", auth)]
        value = client_headers.get("Authorization") or client_headers.get("authorization")
        return [(b"Authorization", _wire(value))] if value else []


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


def new_session() -> Pool:
    """The keep-alive pool shared by all upstreams of one process (`Upstreams(config, pool)`;
    the owner closes it). Bytes are forwarded as received: no decompression, no headers added
    beyond Host and Content-Length."""
    return Pool()


def _pins(config: Config) -> list[tuple[UpstreamConfig, str]]:
    return [(u, m) for u in config.upstreams for m in u.models]
