"""Decision tallies (tool, arguments, fields) and their rates: semantics, intervals that cover on
heterogeneous simulated worlds, compounding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimator.decision_rates import DecisionSums, RatioSums, compound, compounded, rate
from estimator.decision_sim import FlipWorld, tool_runs
from estimator.decisions import OTHER, UNPARSED, same_data, tally_trial
from estimator.model import Run, ToolCall


def _calls(*calls: tuple[str, str]) -> Run:
    return Run((), None, None, "", "tool_calls", tool_calls=tuple(ToolCall(n, a) for n, a in calls))


def _text(text: str) -> Run:
    return Run(tuple(text.split()), None, None, text, "stop")


def test_same_data_compares_values_not_text() -> None:
    assert same_data({"a": 1, "b": [1, 2]}, {"b": [1, 2.0], "a": 1.0})
    assert not same_data({"a": True}, {"a": 1})
    assert not same_data([1, 2], [2, 1])
    assert not same_data("1", 1)
    assert not same_data(None, 0)


def test_tool_and_arguments_per_replay() -> None:
    primary = _calls(("get", '{"city": "Paris", "days": 3}'))
    runs = (
        primary,
        _calls(("get", '{ "days": 3.0, "city": "Paris" }')),  # same data, other text
        _calls(("get", '{"city": "Lyon", "days": 3}')),  # other arguments
        _calls(("put", '{"city": "Paris", "days": 3}')),  # other tool
        _text("I cannot call tools"),  # no call at all: another tool decision
        _calls(
            ("get", '{"city": "Paris"'),
        ),  # truncated: unparseable, differs as text
    )
    t = tally_trial(runs, "tools")
    assert t is not None
    assert (t.replays, t.tool_compared, t.tool_changed) == (5, 5, 2)
    assert (t.arguments_compared, t.arguments_changed, t.arguments_unparseable) == (3, 2, 1)
    assert t.any_changed == 4
    assert (t.field_compared, t.fields) == (0, ())


def test_unparseable_arguments_that_agree_as_text_are_not_a_change() -> None:
    runs = (_calls(("f", "not json")), _calls(("f", "not json")), _calls(("f", "not json!")))
    t = tally_trial(runs, "tools")
    assert t is not None
    assert (t.arguments_compared, t.arguments_changed, t.arguments_unparseable) == (2, 1, 2)


def test_tool_sequences_differ_by_order_and_length() -> None:
    base = _calls(("a", "{}"), ("b", "{}"))
    t = tally_trial((base, _calls(("b", "{}"), ("a", "{}")), _calls(("a", "{}"))), "tools")
    assert t is not None and t.tool_changed == 2 and t.arguments_compared == 0


def test_json_fields_changed_added_removed() -> None:
    runs = (
        _text('{"label": "spam", "score": 0.9, "why": "link"}'),
        _text('{"score": 0.9, "label": "spam", "why": "link"}'),  # same
        _text('{"label": "ham", "score": 0.9}'),  # changed label, removed why
        _text('{"label": "spam", "score": 0.9, "why": "link", "extra": 1}'),  # added
        _text('{"label": "spam", "score"'),  # not JSON
    )
    t = tally_trial(runs, "json")
    assert t is not None
    assert (t.field_compared, t.field_changed, t.field_unparseable, t.any_changed) == (4, 3, 1, 3)
    by = {f.name: (f.changed, f.added, f.removed) for f in t.fields}
    assert by == {"label": (1, 0, 0), "why": (0, 0, 1), "extra": (0, 1, 0), UNPARSED: (1, 0, 0)}
    assert (t.tool_compared, t.arguments_compared) == (0, 0)


def test_fields_beyond_the_limit_are_pooled() -> None:
    primary = _text('{"a": 1, "b": 1, "c": 1}')
    t = tally_trial((primary, _text('{"a": 2, "b": 2, "c": 2}')), "json", max_fields=2)
    assert t is not None
    assert {f.name: f.changed for f in t.fields} == {"a": 1, "b": 1, OTHER: 1}
    sums = DecisionSums().fold(t, max_fields=1)
    assert set(sums.fields) == {"a", OTHER}


def test_plain_trials_and_lone_primaries_have_no_tally() -> None:
    assert tally_trial((_text("a"), _text("b")), "plain") is None
    assert tally_trial((_calls(("f", "{}")),), "tools") is None


def test_sums_fold_and_pool_additively() -> None:
    a = tally_trial((_calls(("f", "{}")), _calls(("g", "{}")), _calls(("f", "{}"))), "tools")
    b = tally_trial((_calls(("f", "{}")), _calls(("f", '{"x": 1}'))), "tools")
    assert a is not None and b is not None
    s = DecisionSums().fold(a).fold(b)
    assert (s.trials, s.replays) == (2, 3)
    assert s.decisions["tool"] == RatioSums(2, 1, 3, 1, 5, 2)
    assert s.decisions["arguments"] == RatioSums(2, 1, 2, 1, 2, 1)
    assert s.any == RatioSums(2, 2, 3, 2, 5, 3)
    assert RatioSums().add(1, 2) + RatioSums().add(0, 1) == RatioSums().add(1, 2).add(0, 1)


def test_rate_without_data_and_at_the_edges() -> None:
    assert math.isnan(rate(RatioSums()).estimate)
    zero = rate(RatioSums().add(0, 3).add(0, 3).add(0, 3))
    assert zero.estimate == 0.0 and zero.lower == 0.0 and 0.0 < zero.upper < 1.0
    # no flip in many trials: the upper bound shrinks with the trials, not only the replays
    many = RatioSums()
    for _ in range(200):
        many = many.add(0, 2)
    assert rate(many).upper < zero.upper
    assert rate(many).upper >= 1 - 0.025 ** (1 / 200)  # no narrower than 200 trials allow
    assert rate(RatioSums().add(2, 2).add(2, 2)).upper == 1.0


def test_compounding_is_the_monotone_transform_of_the_bounds() -> None:
    assert compound(0.0, 10) == 0.0
    assert compound(0.01, 100) == pytest.approx(1 - 0.99**100)
    r = rate(RatioSums().add(1, 3).add(0, 3).add(2, 3).add(0, 3))
    for c in compounded(r, (1, 10, 100)):
        assert c.lower <= c.estimate <= c.upper
        assert c.estimate == pytest.approx(1 - (1 - r.estimate) ** c.steps)
    one = compounded(r, (1,))[0]
    assert (one.lower, one.upper) == pytest.approx((r.lower, r.upper))


def test_simulated_runs_are_tallied_as_their_decisions() -> None:
    rng = np.random.default_rng(3)
    world = FlipWorld(max_replays=4)
    for d in world.decisions(rng, 50):
        t = tally_trial(tool_runs(d), "tools")
        assert t is not None
        assert (t.tool_compared, t.tool_changed) == (len(d) - 1, int((d[1:] != d[0]).sum()))


# Worlds with heterogeneous prompts: many never flip, the rest with Beta-distributed propensities;
# up to 6 replays per trial, so replays of one prompt are strongly alike.
WORLDS = (
    FlipWorld(a=0.4, b=6.0, never_share=0.3, max_replays=6),
    FlipWorld(a=2.0, b=8.0, never_share=0.0, max_replays=6),
)


@pytest.mark.parametrize("world", WORLDS, ids=["sparse", "dense"])
def test_the_interval_covers_the_truth_at_its_level(world: FlipWorld) -> None:
    """300 data sets of 40 trials: the 95 % interval covers the population flip rate in >= 92 %
    (2.4 SE below 95 %). An interval that takes replays as independent (Wilson over replays)
    covers about 80 % in these worlds: the test fails if the trial stops being the unit."""
    rng = np.random.default_rng(11)
    truth = world.truth()
    covered = 0
    runs = 300
    for _ in range(runs):
        y, m = world.flips(rng, 40)
        sums = RatioSums()
        for yi, mi in zip(y.tolist(), m.tolist(), strict=True):
            sums = sums.add(yi, mi)
        r = rate(sums)
        covered += r.lower <= truth <= r.upper
    assert covered / runs >= 0.92, (covered, runs, truth)


def test_a_field_rate_counts_unchanged_trials_as_zero() -> None:
    s = DecisionSums()
    s = s.fold(tally_trial((_text('{"a": 1}'), _text('{"a": 2}'), _text('{"a": 1}')), "json"))  # type: ignore[arg-type]
    s = s.fold(tally_trial((_text('{"a": 1}'), _text('{"a": 1}')), "json"))  # type: ignore[arg-type]
    r = s.field_rate("a")
    assert (r.trials, r.changed, r.compared) == (2, 1, 3)
    assert r.estimate == pytest.approx(1 / 3)
