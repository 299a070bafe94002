"""The shadow section: defaults, per-model overrides, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.shadow.config import ShadowConfigError, parse_shadow_config
from proxy.shadow.load import load_bucket


def test_absent_section_disables_shadow_and_present_enables() -> None:
    assert not parse_shadow_config(None).enabled
    assert not parse_shadow_config({}).enabled
    cfg = parse_shadow_config({"sample_rate": 0.2, "models": {"m": {"sample_rate": 1.0}}})
    assert cfg.enabled
    assert cfg.policy("m").sample_rate == 1.0
    assert cfg.policy("other").sample_rate == 0.2
    # per-model entries inherit the section's defaults for what they leave out
    assert cfg.policy("m").ceiling == cfg.defaults.ceiling
    assert not parse_shadow_config({"enabled": False, "sample_rate": 1.0}).enabled


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"sample_rate": 1.5}, "shadow.sample_rate"),
        ({"sample_rate": "high"}, "shadow.sample_rate"),
        ({"replays": 0}, "shadow.replays"),
        ({"top_logprobs": 21}, "shadow.top_logprobs"),
        ({"ceiling": 0}, "shadow.ceiling"),
        ({"enabled": "yes"}, "shadow.enabled"),
        ({"load_source": "prometheus"}, "shadow.load_source"),
        ({"models": {"m": {"sample_rate": -1}}}, "shadow.models.m.sample_rate"),
        ({"models": {"m": {"replays": 3}}}, "shadow.models.m.replays"),
        ({"models": []}, "shadow.models"),
        ({"sampel_rate": 0.1}, "shadow.sampel_rate"),
        ({"eligibility": {"x": 1}}, "shadow.eligibility.x"),
        ({"logprobs": "maybe"}, "shadow.logprobs"),
    ],
)
def test_bad_values_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ShadowConfigError) as info:
        parse_shadow_config(raw)
    assert str(info.value).startswith(field + ":")


def test_a_renamed_field_says_what_it_became() -> None:
    with pytest.raises(ShadowConfigError) as info:
        parse_shadow_config({"half_life_comparisons": 200})
    assert str(info.value).startswith("shadow.half_life_comparisons: renamed to half_life_trials")
    assert parse_shadow_config({"half_life_trials": 50}).half_life_trials == 50


@pytest.mark.parametrize(
    ("n", "bucket"),
    [
        (0, "1"),
        (1, "1"),
        (2, "2"),
        (3, "4"),
        (4, "4"),
        (5, "8"),
        (17, "32"),
        (32, "32"),
        (33, "64+"),
        (1000, "64+"),
    ],
)
def test_load_buckets(n: int, bucket: str) -> None:
    assert load_bucket(n) == bucket
