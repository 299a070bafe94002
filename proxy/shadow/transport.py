"""How replays reach an upstream: the process's one upstream client (proxy/h1.py), with each
upstream's auth and time limits.

Used in the proxy process (the proxy's own pool) and in the shadow worker process (its own). A
replay runs under the upstream's connect / first-byte / total limits, each cut to the replay
timeout; the /metrics poll under the same limits cut to METRICS_TIMEOUT_S. Failures raise
proxy.h1.UpstreamError (timeout, connect, reset, protocol), a /metrics answer that is not 2xx
MetricsUnavailable. For an upstream with discovered endpoints a replay goes to its primary's pod
(another address if that one refuses the connection) and a /metrics poll to the pod it names
(never another: the figure is that pod's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from proxy.upstreams import Upstreams

METRICS_TIMEOUT_S = 5.0
_JSON = (b"Content-Type", b"application/json")


class MetricsUnavailable(Exception):
    """The upstream answered GET /metrics with a status other than 2xx."""


class UpstreamTransport:
    """Replays through the process's pooled client, with each upstream's auth and limits."""

    def __init__(self, upstreams: Callable[[], Upstreams], replay_keys: Mapping[str, str]) -> None:
        self._upstreams = upstreams  # in the proxy, Upstreams exists only once the app started
        self._keys = {  # upstream name -> the Authorization of its dedicated replay key
            name: b"Bearer " + key.encode("latin-1") for name, key in replay_keys.items()
        }

    async def post_json(
        self,
        upstream: str,
        path: str,
        body: bytes,
        client_headers: Mapping[str, str],
        timeout_s: float,
        pod: str | None = None,
    ) -> tuple[int, bytes]:
        upstreams = self._upstreams()
        target = upstreams.upstream_for(upstream)
        key = self._keys.get(upstream)
        if key is not None:
            headers = [(b"Authorization", key), _JSON]
        else:
            headers = [*upstreams.auth_headers(target, client_headers), _JSON]
        reply = await upstreams.fetch(
            target,
            "POST",
            upstreams.api_path(target, path),
            headers,
            body,
            within=timeout_s,
            pod=pod,
        )
        return reply.status, reply.body

    async def fetch_metrics(self, upstream: str, pod: str | None = None) -> str:
        upstreams = self._upstreams()
        target = upstreams.upstream_for(upstream)
        reply = await upstreams.fetch(
            target,
            "GET",
            upstreams.root_path(target, "/metrics"),
            within=METRICS_TIMEOUT_S,
            pod=pod,
            fallback=False,
        )
        if not 200 <= reply.status < 300:
            raise MetricsUnavailable(f"GET /metrics answered {reply.status}")
        return reply.body.decode("utf-8", "replace")

    def pods(self, upstream: str) -> tuple[str, ...]:
        """The addresses of `upstream` now (proxy/endpoints.py); () for a static base_url."""
        endpoints = self._upstreams().endpoint_set(upstream)
        return endpoints.pods() if endpoints is not None else ()
