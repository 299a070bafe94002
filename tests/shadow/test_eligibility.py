"""Eligibility verdicts: greedy or seeded, or ineligible with one reason of a fixed set; the
verdicts are shared constants (nothing allocated per request); `is_greedy` agrees with them."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.shadow.config import Eligibility, parse_shadow_config
from proxy.shadow.eligibility import (
    GREEDY,
    N_GT_1,
    NOT_GREEDY,
    REASONS,
    ROUTE_UNSUPPORTED,
    SEEDED,
    SEEDED_OFF,
    Verdict,
    judge,
)
from proxy.shadow.wire import is_greedy


@pytest.mark.parametrize(
    ("route", "body", "verdict"),
    [
        ("chat", {"temperature": 0}, GREEDY),
        ("chat", {"temperature": 0.0, "seed": 7}, GREEDY),  # greedy wins: the seed changes nothing
        ("chat", {"temperature": 1, "top_k": 1}, GREEDY),
        ("chat", {"temperature": 0.7, "seed": 7}, SEEDED),
        ("chat", {"seed": 7}, SEEDED),  # absent temperature: OpenAI's 1, sampled with a seed
        ("chat", {"temperature": 0.7, "seed": -3}, SEEDED),
        ("chat", {"temperature": 0.7}, NOT_GREEDY),
        ("chat", {}, NOT_GREEDY),
        ("chat", {"temperature": 0.7, "seed": True}, NOT_GREEDY),  # a bool is not a seed
        ("chat", {"temperature": 0.7, "seed": 1.5}, NOT_GREEDY),
        ("chat", {"temperature": 0.7, "seed": "7"}, NOT_GREEDY),
        ("chat", {"temperature": -1, "seed": 7}, NOT_GREEDY),
        ("chat", {"temperature": False, "seed": 7}, NOT_GREEDY),
        ("chat", {"temperature": 0, "n": 2}, N_GT_1),
        ("chat", {"temperature": 0.7, "seed": 1, "n": 3}, N_GT_1),  # n comes before the decoding
        ("completions", {"temperature": 0, "best_of": 3}, N_GT_1),
        ("completions", {"temperature": 0, "n": None}, GREEDY),
        ("responses", {"temperature": 0}, GREEDY),
        ("responses", {"temperature": 0.5, "seed": 2}, SEEDED),
        ("responses", {}, NOT_GREEDY),
        ("embeddings", {"temperature": 0}, ROUTE_UNSUPPORTED),
        ("other", {}, ROUTE_UNSUPPORTED),
    ],
)
def test_verdicts(route: str, body: dict[str, Any], verdict: Verdict) -> None:
    got = judge(route, body, Eligibility())
    assert got is verdict  # a shared constant: judging allocates nothing
    assert got.eligible is (verdict.decoding is not None)
    assert is_greedy(route, body, Eligibility()) is (verdict is GREEDY)


def test_seeded_can_be_switched_off() -> None:
    off = parse_shadow_config({"eligibility": {"seeded": False}}).eligibility
    assert judge("chat", {"temperature": 0.7, "seed": 7}, off) is SEEDED_OFF
    assert judge("chat", {"temperature": 0}, off) is GREEDY
    assert parse_shadow_config({}).eligibility.seeded is True  # on by default


def test_the_other_switches_still_hold() -> None:
    assert judge("chat", {}, Eligibility(missing_temperature_is_greedy=True)) is GREEDY
    rules = Eligibility(allow_top_k_1=False)
    assert judge("chat", {"temperature": 1, "top_k": 1}, rules) is NOT_GREEDY


def test_reasons_are_a_small_fixed_set_and_indices_name_them() -> None:
    assert REASONS == ("not_greedy", "n_gt_1", "seeded_off", "not_replayable",
                       "route_unsupported")  # fmt: skip
    for verdict in (NOT_GREEDY, N_GT_1, SEEDED_OFF, ROUTE_UNSUPPORTED):
        assert REASONS[verdict.index] == verdict.reason and verdict.decoding is None
    assert (GREEDY.decoding, SEEDED.decoding) == ("greedy", "seeded")
