"""The backend fingerprint tracker: what a change is (and what flapping is not), the bounds, and
T_bg per fingerprint epoch against simulations with a known temperature (fixed seeds)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from estimator.online import OnlineEstimator, TrialComparison
from estimator.simulate import simulate_pairs
from proxy.shadow.config import ShadowConfig
from proxy.shadow.fingerprint_wire import (
    FingerprintReader,
    TrialFingerprint,
    clean,
    from_events,
    primary_fingerprint,
)
from proxy.shadow.fingerprints import FingerprintPolicy, FingerprintSummary, FingerprintTracker
from proxy.shadow.state import online_config

KEY = ("u", "m")
ONLINE = online_config(ShadowConfig())  # the Aggregator's own


def comparisons(temperature: float, n: int, seed: int) -> list[TrialComparison]:
    est = OnlineEstimator(ONLINE)
    sim = simulate_pairs(np.random.default_rng(seed), pairs=n, length=64, temperature=temperature)
    return [est.compare(t) for t in sim.trials()]


def clock() -> itertools.count[float]:
    return itertools.count(1000.0, 1.0)


def tracker(**policy: Any) -> FingerprintTracker:
    times = clock()
    return FingerprintTracker(ONLINE, FingerprintPolicy(**policy), clock=lambda: next(times))


def feed(t: FingerprintTracker, fingerprints: Sequence[str | None], c: TrialComparison) -> None:
    for fp in fingerprints:
        t.observe(KEY, TrialFingerprint(fp), c)


def one(t: FingerprintTracker) -> FingerprintSummary:
    (summary,) = t.publish()
    return summary


@pytest.fixture(scope="module")
def calm() -> TrialComparison:
    return comparisons(0.0, 1, seed=1)[0]


def test_first_fingerprint_is_an_epoch_not_a_change(calm: TrialComparison) -> None:
    t = tracker()
    feed(t, ["A"] * 9, calm)
    s = one(t)
    assert s.current is None and s.changes == 0  # fewer than min_trials: undecided
    feed(t, ["A"], calm)
    s = one(t)
    assert s.current is not None and s.current.fingerprint == "A"
    assert s.changes == 0 and s.previous is None and s.current.trials == 10


def test_a_rollout_is_one_change_once_the_new_one_dominates(calm: TrialComparison) -> None:
    t = tracker()
    feed(t, ["A"] * 40, calm)
    feed(t, ["B"] * 35, calm)  # 35 of the last 40: not yet 90 %
    assert one(t).changes == 0 and one(t).current.fingerprint == "A"  # type: ignore[union-attr]
    feed(t, ["B"], calm)  # 36 of 40
    s = one(t)
    assert s.changes == 1 and s.last_change_at is not None
    assert s.current is not None and s.previous is not None
    assert (s.current.fingerprint, s.previous.fingerprint) == ("B", "A")
    assert s.previous.until == s.current.since == s.last_change_at
    feed(t, ["B"] * 100, calm)
    assert one(t).changes == 1  # staying on B counts nothing more


def test_mixed_pods_flapping_is_not_a_change(calm: TrialComparison) -> None:
    """Half the pods upgraded: the fingerprint alternates trial by trial for a long time."""
    t = tracker()
    feed(t, ["A"] * 40, calm)
    rng = np.random.default_rng(3)
    feed(t, ["A" if x < 0.5 else "B" for x in rng.random(5000)], calm)
    s = one(t)
    assert s.changes == 0 and s.current is not None and s.current.fingerprint == "A"
    assert dict(s.counts)["B"] > 2000  # counted beside the current epoch
    feed(t, ["B"] * 40, calm)  # the rollout completes: one change
    assert one(t).changes == 1


def test_a_rollback_is_a_change_back(calm: TrialComparison) -> None:
    t = tracker()
    feed(t, ["A"] * 40 + ["B"] * 40 + ["A"] * 40, calm)
    s = one(t)
    assert s.changes == 2 and s.current.fingerprint == "A"  # type: ignore[union-attr]
    assert s.previous.fingerprint == "B"  # type: ignore[union-attr]


def test_trials_without_a_fingerprint_never_decide(calm: TrialComparison) -> None:
    t = tracker()
    feed(t, [None] * 5, calm)
    assert t.publish() == ()  # a key that never showed one reports nothing
    feed(t, ["A"] * 10 + [None] * 50, calm)
    s = one(t)
    assert s.unknown == 50 and s.changes == 0 and s.current.fingerprint == "A"  # type: ignore[union-attr]


def test_bounded_the_rest_pooled(calm: TrialComparison) -> None:
    t = tracker()
    feed(t, ["A"] * 40 + ["B"] * 40, calm)  # current B, previous A
    feed(t, [f"X{i}" for i in range(50)], calm)  # a stream of one-off fingerprints
    s = one(t)
    assert len(s.counts) <= FingerprintPolicy().tracked
    fps = dict(s.counts)
    assert "A" in fps and "B" in fps  # current and previous are never evicted
    assert sum(fps.values()) + s.other == 130
    assert s.changes == 1  # none of them dominated


def test_mixed_trials_are_counted_not_estimated(calm: TrialComparison) -> None:
    t = tracker()
    for _ in range(10):
        t.observe(KEY, TrialFingerprint("A", ("A", "A")), calm)
    t.observe(KEY, TrialFingerprint("A", ("A", "B")), calm)
    s = one(t)
    assert s.mixed == 1 and s.current is not None
    assert s.current.trials == 11 and s.current.snapshot.trials == 10


def test_epochs_estimate_each_backend_alone_and_show_the_move() -> None:
    """A changes to B and T_bg with it (0.02 -> 0.2, simulated): each epoch's interval covers
    its own backend's temperature, and the two are disjoint."""
    t = tracker()
    for c in comparisons(0.02, 300, seed=11):
        t.observe(KEY, TrialFingerprint("A"), c)
    for c in comparisons(0.2, 300, seed=12):
        t.observe(KEY, TrialFingerprint("B"), c)
    s = one(t)
    assert s.changes == 1 and s.current is not None and s.previous is not None
    before, after = s.previous.snapshot, s.current.snapshot
    assert before.lower <= 0.02 <= before.upper, (before.lower, before.upper)
    assert after.lower <= 0.2 <= after.upper, (after.lower, after.upper)
    assert s.moved == "up"


def test_a_change_that_keeps_t_bg_does_not_move() -> None:
    t = tracker()
    for c in comparisons(0.1, 300, seed=21):
        t.observe(KEY, TrialFingerprint("A"), c)
    for c in comparisons(0.1, 300, seed=22):
        t.observe(KEY, TrialFingerprint("B"), c)
    s = one(t)
    assert s.changes == 1 and s.moved is None


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="share"):
        FingerprintPolicy(share=0.5)
    with pytest.raises(ValueError, match="min_trials"):
        FingerprintPolicy(window=5, min_trials=6)
    with pytest.raises(ValueError, match="tracked"):
        FingerprintPolicy(tracked=2)


# -- reading it off the wire -----------------------------------------------------------------------
def test_read_from_bodies_and_streams() -> None:
    body = b'{"id":"x","system_fingerprint":"fp_44709d6fcb","choices":[]}'
    assert primary_fingerprint(False, body, ()) == "fp_44709d6fcb"
    assert primary_fingerprint(False, b'{"id":"x","choices":[]}', ()) is None
    assert primary_fingerprint(False, b'{"system_fingerprint": null}', ()) is None
    assert primary_fingerprint(False, None, ()) is None
    # vLLM stamps the terminal chunk only (or the usage chunk); OpenAI every chunk
    vllm: list[dict[str, Any]] = [
        {"choices": [{}]},
        {"choices": [{}], "system_fingerprint": "vllm-0.11.0-1a2b3c4d"},
    ]
    assert from_events(vllm) == "vllm-0.11.0-1a2b3c4d"
    assert primary_fingerprint(True, None, vllm) == "vllm-0.11.0-1a2b3c4d"
    assert from_events([{"choices": []}]) is None


def test_values_that_are_not_fingerprints() -> None:
    assert clean(7) is None and clean("") is None and clean("  ") is None
    assert clean("fp\nx") is None and clean("é") is None
    assert clean("x" * 500) == "x" * 96


def test_reader_pairs_replays_with_their_primary() -> None:
    reader = FingerprintReader()
    reader.replay(1, {"system_fingerprint": "A"})
    reader.replay(1, {"system_fingerprint": "B"})
    reader.replay(2, {})
    fp = reader.take(1, False, b'{"system_fingerprint":"A"}', ())
    assert fp == TrialFingerprint("A", ("A", "B")) and fp.mixed
    reader.forget(2)
    assert reader.take(2, False, None, ()) == TrialFingerprint(None, ())
