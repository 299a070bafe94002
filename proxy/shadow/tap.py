"""The Tap stage: the shadow path as the proxy sees it (a proxy.tap.Tap), and the pipeline's owner.

Tap → Job → Worker (replay + compare) → Outcome → Aggregator → View (docs/internals.md). On the hot
path `plan` is a dict lookup, a coin flip and, for sampled requests only, a rate-budget check and
(with augment_logprobs) one orjson.dumps; `complete` turns a sampled primary into a compact Job and
hands it to the Executor without waiting. The Executor runs the Worker inline or in the shadow
worker process (`shadow.worker`): the same messages either way. Nothing flows back to the Tap but
through the Aggregator: its published view and the logprobs capability it keeps.

Accounting per sampled primary, exact once idle: sampled = replayed + dropped + failed.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from proxy.shadow.aggregator import Aggregator, Render
from proxy.shadow.canary import CanaryChooser
from proxy.shadow.capability import logprobs_key, remember
from proxy.shadow.config import ShadowConfig
from proxy.shadow.eligibility import GREEDY, NOT_REPLAYABLE, judge
from proxy.shadow.executor import Executor, InlineLink, Link, ProcessLink, WorkerSpec
from proxy.shadow.load import InFlightProbe, LoadTracker
from proxy.shadow.messages import Dropped, Job
from proxy.shadow.optout import replay_choice
from proxy.shadow.responses_wire import PlainForm, echo_key, form_of_body, form_of_events, restore
from proxy.shadow.sampling import Sampler
from proxy.shadow.view import Key, ShadowView
from proxy.shadow.wire import (
    augmented_upstream_body,
    client_wants_logprobs,
    drop_logprobs,
    has_logprobs_key,
    replayable,
    strip_logprobs,
)
from proxy.shadow.worker import ReplayTransport
from proxy.tap import Exchange, RequestInfo, TapPlan

log = logging.getLogger("tbg.shadow")

# What a primary's augmentation depends on: (upstream, model as the client names it, streaming).
Shape = tuple[str, str, bool]


@dataclass(frozen=True, slots=True)
class _Ticket:
    """Carried from plan() to complete() inside TapPlan.token."""

    key: Key
    load_at_start: int
    shape: Shape
    augmented: bool
    fell_back: bool = False  # augmented, refused by the upstream, resent plain
    decoding: str = "greedy"  # proxy.shadow.eligibility.DECODINGS


def _events_have_logprobs(events: Iterable[Mapping[str, Any]]) -> bool:
    for event in events:
        choices = event.get("choices")
        if isinstance(choices, list):
            return any(isinstance(c, Mapping) and "logprobs" in c for c in choices)
    return False


class ShadowTap:
    """Implements proxy.tap.Tap; `start()` spawns the workers, `stop()` cancels and awaits them."""

    def __init__(
        self,
        config: ShadowConfig,
        transport: ReplayTransport,
        in_flight: InFlightProbe,
        *,
        rng: random.Random | None = None,
        render: Render | None = None,
        worker: WorkerSpec | None = None,
    ) -> None:
        """`worker`: None runs the Worker inline, a WorkerSpec in the shadow worker process."""
        self.config = config
        self.sampler = Sampler(config, rng=rng or random.Random())
        self.load = LoadTracker(in_flight)
        self.aggregator = Aggregator(config, render=render)
        self._transport = transport
        link: Link
        if worker is None:
            link = InlineLink(config, transport, self.aggregator.hash_key)
        else:
            link = ProcessLink(worker, self.aggregator.hash_key)
        self.executor = Executor(config, link, self.load, self.aggregator)
        self._job_ids = itertools.count()
        # Per shape, learned from plain primaries the upstream answered 200: whether its answer
        # carries `logprobs` keys (null) at all, so stripping restores exactly those bytes. A
        # shape is augmented only once known here, and never again once the upstream refused an
        # augmented request of it that it then served plain.
        self._plain_has_key: dict[Shape, bool] = {}
        self._refused: dict[Shape, bool] = {}
        # The Responses API's plain answers, learned the same way but per location and event
        # type (proxy.shadow.responses_wire), and per the client's own `top_logprobs` (echoed).
        self._plain_forms: dict[tuple[Shape, bytes], PlainForm] = {}
        self._canary = CanaryChooser(dict(config.canary))  # which trials replay on a canary
        # Requests on routes the forwarder never shows the Tap (route_unsupported in /tbg's
        # `measured` block); set by wiring from the per-route request counter.
        self.untapped_requests: Callable[[], int] = lambda: 0

    @property
    def on_internal_error(self) -> Callable[[], None]:
        return self.aggregator.on_internal_error

    @on_internal_error.setter
    def on_internal_error(self, count: Callable[[], None]) -> None:
        self.aggregator.on_internal_error = count  # the Worker's InternalError outcomes too

    def view(self) -> ShadowView:
        """The last published view of the estimates and counters."""
        return self.aggregator.view

    # -- lifecycle ------------------------------------------------------------------------------
    def prime(self, keys: Iterable[Key]) -> None:
        """Export every (upstream, model_name) series the configuration can produce, at 0."""
        self.aggregator.prime(keys)

    async def start(self, upstreams_for_polling: tuple[str, ...] = ()) -> None:
        await self.aggregator.start()
        await self.executor.start()
        if self.config.load_source == "vllm_metrics" and upstreams_for_polling:
            self.load.start_polling(
                self._transport, upstreams_for_polling, self.config.load_poll_seconds,
                getattr(self._transport, "pods", None),  # discovered pods, polled one by one
            )  # fmt: skip

    async def stop(self) -> None:
        await self.executor.stop()  # jobs still queued are dropped as "shutdown"
        await self.load.stop()
        await self.aggregator.stop()

    async def idle(self, within_s: float) -> bool:
        """Wait until every job handed off has ended, then publish (tests, the demo).
        False if not idle within `within_s` seconds."""
        if not await self.executor.idle(within_s):
            return False
        await self.aggregator.flush()
        return True

    def queue_depth(self) -> int:
        return self.executor.queue_depth()

    # -- hot path (proxy.tap.Tap) ---------------------------------------------------------------
    def plan(self, request: RequestInfo) -> TapPlan | None:
        verdict = judge(request.route, request.body, self.config.eligibility)
        agg = self.aggregator
        if verdict.decoding is None:
            agg.coverage.ineligible(request.upstream, request.model_name, verdict.index)
            return None
        if not replayable(request.raw_body, request.body):
            # nested too deeply to send again: ineligible, like a sampled request
            agg.coverage.ineligible(request.upstream, request.model_name, NOT_REPLAYABLE.index)
            return None
        key = (request.upstream, request.model_name)
        if verdict is GREEDY:
            agg.count_eligible(key)
        else:
            agg.coverage.seeded_eligible(key)
        decision = self.sampler.decide(request.model_name, replay_choice(request.headers))
        if not decision.sampled:
            return None
        agg.sampled(key)
        if decision.dropped_reason is not None:
            agg.apply(Dropped(key, decision.dropped_reason))
            return None
        if self.executor.full():  # would be dropped at complete(); do not touch the request at all
            self.sampler.refund_rate(request.model_name)
            agg.apply(Dropped(key, "queue_full"))
            return None
        upstream, model = logprobs_key(request)
        shape = (upstream, model, request.stream)
        # Augment only a shape proven safe: replays showed this upstream and model return
        # logprobs, a plain primary of the same shape showed what its answer looks like, and no
        # augmented one was refused. Should the upstream still refuse it, the proxy resends the
        # client's own body (TapPlan.plain): augmentation never becomes the client's error.
        has_key = self._plain_has_key.get(shape)
        if has_key is None and self.config.logprobs == "yes":
            has_key = True  # declared: augment from the first request; vLLM and OpenAI send null
        strip = self._stripper(request, shape, has_key)
        augment = (
            self.config.augment_logprobs
            and strip is not None
            and shape not in self._refused
            and agg.supports_logprobs(upstream, model) is True
            and not client_wants_logprobs(request.route, request.body)
        )
        # plan() runs before the primary is counted in flight; a replay counts itself, so the
        # primary counts itself too (+1) for both to see the same load at the same batch size.
        ticket = _Ticket(key, self.load.current(request.upstream, request.pod) + 1, shape, augment,
                         decoding=verdict.decoding)  # fmt: skip
        if not augment:
            return TapPlan(token=ticket)
        body = augmented_upstream_body(request.route, request.body, self.config.top_logprobs)
        assert strip is not None
        plain = TapPlan(token=replace(ticket, augmented=False, fell_back=True))
        if request.stream:
            return TapPlan(upstream_body=body, rewrite_event=strip, token=ticket, plain=plain)
        return TapPlan(upstream_body=body, rewrite_body=strip, token=ticket, plain=plain)

    def complete(self, exchange: Exchange) -> None:
        ticket = exchange.plan.token
        if not isinstance(ticket, _Ticket):
            return
        if exchange.status == 200 and exchange.completed:
            self._learn(ticket, exchange)
        if exchange.status != 200 or not exchange.completed or exchange.truncated:
            log.info("primary not replayed: status %s, completed %s, truncated %s",
                     exchange.status, exchange.completed, exchange.truncated)  # fmt: skip
            self.sampler.refund_rate(exchange.request.model_name)
            self.aggregator.apply(Dropped(ticket.key, "primary_incomplete"))
            return
        # None: replayed on the primary's upstream. Seeded trials are never a canary's: its
        # T_bg and cross-divergence are statements about greedy decoding.
        target = self._canary.target(exchange) if ticket.decoding == "greedy" else None
        job = Job.of(next(self._job_ids), exchange, ticket.key, ticket.load_at_start, target,
                     decoding=ticket.decoding)  # fmt: skip
        if not self.executor.submit(job):
            self.sampler.refund_rate(exchange.request.model_name)
            self.aggregator.apply(Dropped(ticket.key, "queue_full"))

    def _learn(self, ticket: _Ticket, exchange: Exchange) -> None:
        """What a plain primary the upstream served tells about its shape (once per shape)."""
        shape = ticket.shape
        if ticket.fell_back and shape not in self._refused:
            log.warning(
                "upstream refused an augmented request it serves plain: not augmenting it again",
                extra={"upstream": shape[0], "stream": shape[2]},
            )
            remember(self._refused, shape, True)
        if exchange.request.route == "responses":
            self._learn_form(ticket, exchange)
            return
        if ticket.augmented or shape in self._plain_has_key or exchange.truncated:
            return
        if exchange.request.stream:
            has_key = _events_have_logprobs(exchange.events)
        else:
            has_key = has_logprobs_key(exchange.response_body or b"")
        remember(self._plain_has_key, shape, has_key)

    def _stripper(
        self, request: RequestInfo, shape: Shape, has_key: bool | None
    ) -> Callable[[bytes], bytes] | None:
        """How to take an augmentation back out of this primary's answer; None while the plain
        answers of its shape are not known (it is not augmented then)."""
        if request.route == "responses":  # learned only: `logprobs: yes` tells no shape here
            form = self._plain_forms.get((shape, echo_key(request.body)))
            return None if form is None else partial(restore, form=form, event=request.stream)
        if has_key is None:
            return None
        return strip_logprobs if has_key else drop_logprobs

    def _learn_form(self, ticket: _Ticket, exchange: Exchange) -> None:
        request = exchange.request
        key = (ticket.shape, echo_key(request.body))
        if ticket.augmented or key in self._plain_forms or exchange.truncated:
            return
        try:
            if request.stream:
                form = form_of_events(exchange.events)
            else:
                form = form_of_body(exchange.response_body or b"")
        except ValueError:  # not JSON of the Responses shape: nothing learned
            form = None
        if form is not None:  # else it showed no output text: the next plain primary may
            remember(self._plain_forms, key, form)
