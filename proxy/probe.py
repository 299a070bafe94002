"""Is anything there? Probing the upstreams with `GET {base_url}/models`.

At start every upstream is probed once and a wrong one is named in one warning line: nothing
listens, it does not answer in time, or it answers /models with 404 (most often a base URL
without `/v1`). `/readyz` then reflects reachability, with this policy (docs/configuration.md):

- ready when at least one upstream is usable: it answered its last probe with any HTTP response
  (a 4xx/5xx still means something listens; a 401 is an API that wants a key), except a 404 from
  a base URL without `/v1`: every client request would get the same 404 (vLLM's bare
  `{"detail":"Not Found"}`), so that upstream counts as misconfigured, not ready;
- probe results are cached for `max_age` seconds; a readiness request never waits for the network:
  it reads the cache and, when the cache is stale, starts one refresh in the background (at most one
  in flight, so a burst of readiness checks makes no probe storm);
- the probe carries the upstream's injected key if one is configured, never a client's;
- it goes through the proxy's one upstream client, under the upstream's limits cut to the probe
  timeout (connect, first byte and the whole answer each within it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from proxy.config import UpstreamConfig
from proxy.h1 import ConnectFailed, UpstreamError, UpstreamTimeout
from proxy.upstreams import Upstreams

log = logging.getLogger("tbg.probe")

PROBE_TIMEOUT_S = 2.0
MAX_AGE_S = 10.0
PROBE_USER_AGENT = "tbg-proxy-probe"  # so upstream logs (and test fakes) can tell probes apart
_USER_AGENT = PROBE_USER_AGENT.encode()


def public_url(url: str) -> str:
    """`url` without user info, query or fragment: safe to show a client or write to a log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class ProbeResult:
    name: str
    url: str  # public_url of the base URL
    reachable: bool  # any HTTP answer
    status: int | None  # HTTP status of GET /models, None when nothing answered
    detail: str  # one line for people
    at: float  # monotonic time of the answer

    @property
    def usable(self) -> bool:
        """Something answers, and not with the 404 of a base URL that lacks /v1."""
        return self.reachable and not (self.status == 404 and lacks_v1(self.url))

    def to_json(self) -> dict[str, object]:
        return {
            "url": self.url,
            "reachable": self.reachable,
            "usable": self.usable,
            "detail": self.detail,
        }


def lacks_v1(url: str) -> bool:
    return not urlsplit(url).path.rstrip("/").endswith("/v1")


def describe(upstream: UpstreamConfig, status: int | None, error: str | None) -> str:
    """One line naming the upstream and what its /models answer means."""
    where = f"upstream {upstream.name!r} at {public_url(upstream.base_url)}"
    if status is None:
        return f"{where}: {error}; requests routed to it will fail (502/504)"
    if 200 <= status < 300:
        return f"{where}: answers /models"
    if status in (401, 403):
        return f"{where}: answers /models with {status} (it wants a key: api_key_env)"
    if status == 404:
        if lacks_v1(upstream.base_url):
            return (
                f"{where}: GET /models answered 404: the base URL probably lacks /v1 "
                f"(try {public_url(upstream.base_url).rstrip('/')}/v1); not ready until it answers"
            )
        return f"{where}: GET /models answered 404: is it an OpenAI-compatible server?"
    return f"{where}: GET /models answered {status}"


class UpstreamProbe:
    """Cached, rate-bounded reachability of every upstream; owned by the app (start/close)."""

    def __init__(
        self,
        upstreams: Upstreams,
        *,
        timeout: float = PROBE_TIMEOUT_S,
        max_age: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstreams = upstreams
        self._timeout = timeout
        self._max_age = max_age
        self._clock = clock
        self._results: dict[str, ProbeResult] = {}
        self._task: asyncio.Task[None] | None = None
        self.probes = 0  # probe rounds run, for tests and curiosity

    def start(self) -> None:
        """Probe every upstream once in the background, warning about each wrong one."""
        self._refresh(warn=True)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait(self) -> None:
        """Until the round in flight (if any) has finished."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def ready(self) -> tuple[bool | None, dict[str, ProbeResult]]:
        """(any upstream usable, results), or (None, ...) before the first round has answered. Starts a
        background refresh when the results are older than `max_age` and none is running."""
        results = dict(self._results)
        if not results:
            return None, results
        if self._clock() - min(r.at for r in results.values()) > self._max_age:
            self._refresh(warn=False)
        return any(r.usable for r in results.values()), results

    def _refresh(self, *, warn: bool) -> None:
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._round(warn), name="tbg-upstream-probe")

    async def _round(self, warn: bool) -> None:
        self.probes += 1
        configs = [self._upstreams.upstream_for(n) for n in self._upstreams.names]
        try:
            results = await asyncio.gather(*(self._probe(u) for u in configs))
        except Exception:  # a bug, not an upstream failure: visible, and readiness keeps its cache
            log.exception("upstream probe round failed")
            return
        for result in results:
            previous = self._results.get(result.name)
            self._results[result.name] = result
            changed = previous is not None and previous.usable != result.usable
            wrong = not result.usable or result.status == 404
            if (warn and wrong) or changed:
                log.warning(result.detail, extra={"upstream": result.name, "url": result.url})

    async def _probe(self, upstream: UpstreamConfig) -> ProbeResult:
        upstreams = self._upstreams
        headers = [*upstreams.auth_headers(upstream, {}), (b"User-Agent", _USER_AGENT)]
        status: int | None = None
        error: str | None = None
        try:
            reply = await upstreams.fetch(
                upstream,
                "GET",
                upstreams.api_path(upstream, "/models"),
                headers,
                within=self._timeout,
            )
            status = reply.status
        except UpstreamTimeout:
            error = "no answer to GET /models within the probe timeout"
        except ConnectFailed as exc:
            error = f"nothing listens ({exc})"
        except UpstreamError as exc:
            error = f"GET /models failed ({type(exc).__name__})"
        return ProbeResult(
            name=upstream.name,
            url=public_url(upstream.base_url),
            reachable=status is not None,
            status=status,
            detail=describe(upstream, status, error),
            at=self._clock(),
        )


PROBE = web.AppKey("tbg_probe", UpstreamProbe)
