"""The messages of the shadow pipeline: Tap → Job → Worker → Outcome → Aggregator.

Every value that crosses the executor boundary is one of these frozen dataclasses, in both modes:
inline they are handed over as objects, with the worker process they are pickled frames on a
socket pair (proxy.shadow.executor). The stream is one way: Jobs go to the Worker, outcomes come
back, and the Worker never waits for an answer. Each Job ends in exactly one terminal outcome
(`Compared`, `Dropped` or `Failed`), which keeps sampled = replayed + dropped + failed exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from estimator.decisions import DecisionTally
from estimator.online import TrialComparison
from proxy.config import Config
from proxy.shadow.canary import CrossResult, ReplayTarget
from proxy.shadow.classes import RequestClass, classify
from proxy.shadow.fingerprint_wire import TrialFingerprint
from proxy.shadow.view import Exemplar, Key
from proxy.tap import Exchange, RequestInfo

# Of the client's headers a replay needs only these: its auth (passthrough) and its trace context.
_KEPT_HEADERS = {"authorization": "Authorization", "traceparent": "traceparent",
                 "tracestate": "tracestate"}  # fmt: skip


# -- to the worker ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Job:
    """A finished, sampled primary waiting for its replays: bytes and plain values only."""

    id: int  # unique per proxy process: the outcomes name it
    key: Key  # (upstream, model_name)
    load_at_start: int  # the load the primary met (itself included)
    route: str
    raw_body: bytes  # the client's body; the worker parses its own copy
    headers: tuple[tuple[str, str], ...]
    stream: bool
    response_body: bytes | None  # non-streaming primary
    events: tuple[Mapping[str, Any], ...]  # streaming primary: its SSE data payloads
    # what kind of request it is (proxy.shadow.classes); None only for Jobs built by hand
    request_class: RequestClass | None = None
    pod: str | None = None  # the address that served the primary (discovered endpoints only)
    # where the replays go: None, the primary's upstream; else a canary (proxy.shadow.canary)
    target: ReplayTarget | None = None

    @classmethod
    def of(
        cls,
        job_id: int,
        exchange: Exchange,
        key: Key,
        load_at_start: int,
        target: ReplayTarget | None = None,
        decoding: str = "greedy",
    ) -> Job:
        req = exchange.request
        headers = tuple(
            (_KEPT_HEADERS[name.lower()], value)
            for name, value in req.headers.items()
            if name.lower() in _KEPT_HEADERS
        )
        events = tuple(exchange.events) if req.stream else ()
        return cls(job_id, key, load_at_start, req.route, req.raw_body, headers, req.stream,
                   exchange.response_body, events,
                   classify(req.route, req.body, req.stream, decoding, len(req.raw_body)),
                   pod=req.pod, target=target)  # fmt: skip

    def request(self) -> RequestInfo:
        """The primary's request as the worker reads it (its body parsed again)."""
        return RequestInfo(
            route=self.route,
            upstream=self.key[0],
            model_name=self.key[1],
            body=orjson.loads(self.raw_body),
            raw_body=self.raw_body,
            headers=dict(self.headers),
            stream=self.stream,
        )


@dataclass(frozen=True, slots=True)
class Init:
    """The first message to a worker process: the proxy's config and its request-hash key."""

    config: Config
    hash_key: bytes
    nice: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Drop what is queued (`shutdown`), cancel what is in progress (failed), then `Stopped`."""


ToWorker = Job | Init | Stop


# -- from the worker: outcomes ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Compared:
    """Terminal: the trial was replayed and compared (all the Aggregator needs to fold it). The
    load bucket is the proxy's to fill in (it alone knows the load the replays met): the
    exemplars carry an empty one. `request_class` is the Job's, sent back: the Aggregator also
    folds the trial into that class's estimator (none without a class)."""

    job: int
    key: Key
    comparison: TrialComparison
    exemplars: tuple[Exemplar, ...]
    request_class: RequestClass | None = None
    # a canary trial (proxy.shadow.canary): `comparison` is then the canary's replays together
    cross: CrossResult | None = None
    # the backend fingerprints its runs carried (proxy.shadow.fingerprint_wire); None: not read
    fingerprint: TrialFingerprint | None = None
    # each replay's decisions against the primary's (estimator.decisions), tools/json trials only
    decisions: DecisionTally | None = None


@dataclass(frozen=True, slots=True)
class Dropped:
    """Terminal: sampled, never replayed, for `reason` (proxy.shadow.view.DROP_REASONS). The Tap's
    own drops (before any Job) have no job."""

    key: Key
    reason: str
    job: int | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """Terminal: every replay failed, or the trial raised."""

    key: Key
    job: int | None = None


@dataclass(frozen=True, slots=True)
class ReplayStarted:
    """Attempt `attempt` of a replay of `job` is being sent: it is in flight from now on, and the
    load it meets (the proxy's requests in flight to `upstream`, itself included) is taken now."""

    job: int
    attempt: int
    upstream: str
    pod: str | None = None  # the Job's pod: the load taken is that pod's


@dataclass(frozen=True, slots=True)
class ReplayDone:
    """That attempt ended: `ok` or `error` (a replay request, counted, with the tokens its usage
    reported), or None (refused while asking for logprobs: sent again without, not counted)."""

    job: int
    attempt: int
    key: Key
    outcome: str | None
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class LogprobsLearned:
    """A capability learned: whether (upstream, model as the client names it) returns logprobs."""

    upstream: str
    model: str
    supported: bool


@dataclass(frozen=True, slots=True)
class InternalError:
    """A bug in the worker (logged there with its stack): counted as an internal error."""


Outcome = Compared | Dropped | Failed | ReplayDone | LogprobsLearned | InternalError
Terminal = Compared | Dropped | Failed


# -- from the worker: control ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ready:
    """The worker runs and takes jobs."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """The worker reported every job it held; nothing follows."""


FromWorker = Outcome | ReplayStarted | Ready | Stopped
