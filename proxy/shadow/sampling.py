"""Which primaries get replayed: a per-model coin flip and replay-rate budget (the Sampler, asked by
the Tap on the hot path), then a per-model token budget and the replay delays (the ReplayBudget,
asked by the Worker once the primary's length is known). Each has one owner.

Token buckets refill continuously; each holds at most `burst_seconds` worth of its per-minute rate,
so an idle hour does not buy a burst of replays that would itself change the load being measured.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.shadow.config import ModelPolicy, ShadowConfig
from proxy.shadow.optout import ReplayChoice

Clock = Callable[[], float]


class TokenBucket:
    """Continuous-refill bucket: `rate_per_minute` units per minute, capacity `burst` units."""

    __slots__ = ("_burst", "_clock", "_level", "_rate", "_stamp")

    def __init__(self, rate_per_minute: float, burst: float, clock: Clock) -> None:
        self._rate = rate_per_minute / 60.0
        self._burst = burst
        self._clock = clock
        self._level = burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self._burst, self._level + (now - self._stamp) * self._rate)
        self._stamp = now

    def try_take(self, amount: float) -> bool:
        self._refill()
        if self._level < amount:
            return False
        self._level -= amount
        return True

    def give_back(self, amount: float) -> None:
        self._level = min(self._burst, self._level + amount)


@dataclass(frozen=True, slots=True)
class Decision:
    sampled: bool
    dropped_reason: str | None = None  # set when sampled but refused by a budget


_NOT_SAMPLED = Decision(False)
_SAMPLED = Decision(True)
_OPTED_OUT = Decision(True, "opted_out")


class Sampler:
    """Per-model sampling decisions; owned by one ShadowTap, used from the event loop only."""

    def __init__(
        self,
        config: ShadowConfig,
        *,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        burst_seconds: float = 10.0,
    ) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self._clock = clock
        self._burst_seconds = burst_seconds
        self._rate: dict[str, TokenBucket] = {}

    def _bucket(self, model_name: str) -> TokenBucket:
        rate = self._rate.get(model_name)
        if rate is None:
            policy: ModelPolicy = self._config.policy(model_name)
            k = self._config.replays
            # Capacity: `burst_seconds` of budget, but never less than one whole trial.
            burst = max(float(k), policy.replays_per_minute * self._burst_seconds / 60.0)
            rate = self._rate[model_name] = TokenBucket(
                policy.replays_per_minute, burst, self._clock
            )
        return rate

    def decide(self, model_name: str, choice: ReplayChoice = None) -> Decision:
        """Coin flip, then the replay-rate budget for the k replays this trial will send.

        `choice` is the client's `X-TBG-Replay` (proxy/shadow/optout.py): `always` skips the coin
        flip, not the budget; `never` is flipped like any request and, when the coin picks it,
        dropped as `opted_out` before it takes any budget, so the drop counts what the opt-outs
        cost the estimate at the configured rate.
        """
        if choice != "always":
            rate_p = self._config.policy(model_name).sample_rate
            if rate_p <= 0.0 or self._rng.random() >= rate_p:
                return _NOT_SAMPLED
            if choice == "never":
                return _OPTED_OUT
        if not self._bucket(model_name).try_take(self._config.replays):
            return Decision(True, "rate_limit")
        return _SAMPLED

    def refund_rate(self, model_name: str) -> None:
        """A sampled trial that never sends its replays gives its replay-rate units back."""
        self._bucket(model_name).give_back(float(self._config.replays))


class ReplayBudget:
    """Per-model replay token budget and the delay before each replay; owned by one Worker."""

    def __init__(
        self,
        config: ShadowConfig,
        *,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        burst_seconds: float = 10.0,
    ) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self._clock = clock
        self._burst_seconds = burst_seconds
        self._tokens: dict[str, TokenBucket] = {}

    def spend_tokens(self, model_name: str, tokens: int) -> bool:
        """Charge a trial's replay tokens (known only once the primary finished) to the budget."""
        budget = self._tokens.get(model_name)
        if budget is None:
            per_minute = self._config.policy(model_name).tokens_per_minute
            burst = max(1.0, per_minute * self._burst_seconds / 60.0)
            budget = self._tokens[model_name] = TokenBucket(per_minute, burst, self._clock)
        return budget.try_take(float(tokens))

    def delay(self) -> float:
        cfg = self._config
        return cfg.delay_seconds + self._rng.uniform(0.0, cfg.delay_jitter_seconds)
