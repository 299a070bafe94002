"""How replays reach an upstream: a pooled aiohttp session with each upstream's auth and timeouts.

Used in the proxy process (the proxy's own session) and in the shadow worker process (its own).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp

from proxy.upstreams import Upstreams


class UpstreamTransport:
    """Replays through the proxy's own pooled session, with each upstream's auth and timeouts."""

    def __init__(self, upstreams: Callable[[], Upstreams], replay_keys: Mapping[str, str]) -> None:
        self._upstreams = upstreams  # in the proxy, Upstreams exists only once the app started
        self._replay_keys = replay_keys  # upstream name -> dedicated replay key

    async def post_json(
        self,
        upstream: str,
        path: str,
        body: bytes,
        client_headers: Mapping[str, str],
        timeout_s: float,
    ) -> tuple[int, bytes]:
        upstreams = self._upstreams()
        target = upstreams.upstream_for(upstream)
        key = self._replay_keys.get(upstream)
        if key is not None:
            headers = {"Authorization": f"Bearer {key}"}
        else:
            headers = upstreams.auth_headers(target, client_headers)
        headers["Content-Type"] = "application/json"
        limit = min(timeout_s, target.timeouts.total or timeout_s)
        client_timeout = aiohttp.ClientTimeout(total=limit, connect=target.timeouts.connect)
        async with upstreams.session.post(
            upstreams.url(target, path), data=body, headers=headers, timeout=client_timeout
        ) as response:
            return response.status, await response.read()

    async def fetch_metrics(self, upstream: str) -> str:
        upstreams = self._upstreams()
        target = upstreams.upstream_for(upstream)
        root = target.base_url.removesuffix("/v1")
        async with upstreams.session.get(
            f"{root}/metrics", timeout=aiohttp.ClientTimeout(total=5.0)
        ) as response:
            response.raise_for_status()
            return await response.text()
