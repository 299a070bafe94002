"""Sampling probability, replay-rate and token budgets (deterministic clock and RNG)."""

from __future__ import annotations

import random
from types import MappingProxyType

from scipy import stats

from proxy.shadow.config import ModelPolicy, ShadowConfig
from proxy.shadow.sampling import ReplayBudget, Sampler, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_continuously_and_caps_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_minute=60, burst=5, clock=clock)
    assert all(bucket.try_take(1) for _ in range(5))
    assert not bucket.try_take(1)
    clock.now += 2.0  # 1 per second
    assert bucket.try_take(2) and not bucket.try_take(0.5)
    clock.now += 3600
    assert bucket.try_take(5) and not bucket.try_take(1)


def test_sample_rate_is_a_fair_coin_per_model() -> None:
    config = ShadowConfig(
        enabled=True,
        defaults=ModelPolicy(sample_rate=0.1, replays_per_minute=1e9),
        models=MappingProxyType({"hot": ModelPolicy(sample_rate=0.5, replays_per_minute=1e9)}),
    )
    sampler = Sampler(config, rng=random.Random(3))
    n = 4000
    for model, p in (("hot", 0.5), ("anything", 0.1)):
        k = sum(sampler.decide(model).sampled for _ in range(n))
        assert stats.binomtest(k, n, p).pvalue > 0.001, (model, k)
    never = Sampler(ShadowConfig(defaults=ModelPolicy(sample_rate=0.0)), rng=random.Random(1))
    assert not any(never.decide("m").sampled for _ in range(1000))


def test_rate_limit_refuses_and_refund_gives_back() -> None:
    clock = FakeClock()
    config = ShadowConfig(
        enabled=True, replays=2, defaults=ModelPolicy(sample_rate=1.0, replays_per_minute=6)
    )
    sampler = Sampler(config, rng=random.Random(0), clock=clock, burst_seconds=10)
    # Burst = max(k, 6/min * 10 s) = 2 replays: one trial, then refused.
    assert sampler.decide("m").dropped_reason is None
    refused = sampler.decide("m")
    assert refused.sampled and refused.dropped_reason == "rate_limit"
    sampler.refund_rate("m")
    assert sampler.decide("m").dropped_reason is None
    clock.now += 20.0  # 6/min → 2 replays in 20 s
    assert sampler.decide("m").dropped_reason is None


def test_token_budget() -> None:
    clock = FakeClock()
    config = ShadowConfig(enabled=True, defaults=ModelPolicy(tokens_per_minute=600))
    budget = ReplayBudget(config, rng=random.Random(0), clock=clock, burst_seconds=10)
    assert budget.spend_tokens("m", 100)  # burst: 100 tokens
    assert not budget.spend_tokens("m", 1)
    clock.now += 5.0
    assert budget.spend_tokens("m", 50)


def test_delay_with_jitter_stays_in_range() -> None:
    budget = ReplayBudget(
        ShadowConfig(delay_seconds=0.5, delay_jitter_seconds=0.25), rng=random.Random(2)
    )
    delays = [budget.delay() for _ in range(200)]
    assert min(delays) >= 0.5 and max(delays) <= 0.75 and max(delays) - min(delays) > 0.2
