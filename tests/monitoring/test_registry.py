"""Every metric any dashboard panel, template variable or rule reads is exported by the real proxy
(`make_app` with shadow replay enabled) or recorded by our rules; types are respected (counters and
histogram series only through rate()/increase())."""

from __future__ import annotations

import pytest

from grafana import promql, queries

pytest.importorskip(
    "proxy.shadow", reason="proxy/shadow (shadow replay, its metrics) not there yet"
)

from collections.abc import Iterable

from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import REGISTRY, make_app
from proxy.config import build_config
from proxy.shadow.wiring import SHADOW

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
}


def shadow_config_dict() -> dict[str, object]:
    return {
        "upstreams": [{"name": "reference", "base_url": "http://127.0.0.1:9/v1",
                       "models": ["smollm2"]}],
        "shadow": {"enabled": True, "sample_rate": 1.0, "ceiling": 0.05,
                   "models": {"smollm2": {"sample_rate": 1.0, "ceiling": 0.05}}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def registry() -> list[Metric]:
    """What /metrics serves: the registry's families plus the shadow view's pre-rendered text."""
    app = make_app(build_config(shadow_config_dict(), {}))
    shadow = app[SHADOW].aggregator.render_now().decode()
    return [*app[REGISTRY].collect(), *text_string_to_metric_families(shadow)]


def exported(registry: Iterable[Metric]) -> tuple[set[str], set[str], dict[str, set[str]]]:
    """(every series name, counter/histogram series names, labels per series name)."""
    names: set[str] = set()
    counterish: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in registry:
        for suffix in SUFFIXES.get(family.type, ("",)):
            name = family.name + suffix
            names.add(name)
            if family.type in ("counter", "histogram", "summary"):
                counterish.add(name)
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
            if family.type in ("counter", "histogram", "summary"):
                counterish.add(sample.name)
    return names, counterish, labels


def recorded() -> set[str]:
    return {e.where for e in queries.rule_expressions() if e.source == "record"}


def test_registry_exports_the_contract(registry: list[Metric]) -> None:
    names, _, _ = exported(registry)
    for name in ("tbg_requests_total", "tbg_nll_total", "tbg_grid_temperature",
                 "tbg_temperature_ceiling", "tbg_proxy_added_seconds_bucket"):  # fmt: skip
        assert name in names, name


def test_every_expression_reads_only_exported_or_recorded_metrics(
    registry: list[Metric],
) -> None:
    names, _, _ = exported(registry)
    known = names | recorded()
    missing = []
    for e in queries.all_expressions() + queries.variable_queries():
        expr = e.expr
        if e.source == "variable":  # label_values(metric{...}, label)
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        for name in promql.metric_names(promql.substitute(expr)):
            if name not in known:
                missing.append(f"{e.source} {e.where}: {name}")
    assert not missing, "not exported by the proxy:\n" + "\n".join(missing)


def test_counters_only_inside_rate_or_increase(registry: list[Metric]) -> None:
    _, counterish, _ = exported(registry)
    bad = []
    for e in queries.all_expressions():
        for name in promql.counter_misuse(promql.substitute(e.expr), counterish):
            bad.append(f"{e.where}: {name}")
    assert not bad, "\n".join(bad)


def test_grid_and_ceiling_gauges_carry_values(registry: list[Metric]) -> None:
    """The pooled estimate joins on tbg_grid_temperature{grid_t}: it must be there from the start,
    with value == float(grid_t); the ceiling alerts need tbg_temperature_ceiling{model_name}."""
    grid = [s for f in registry for s in f.samples if s.name == "tbg_grid_temperature"]
    assert len(grid) >= 8
    for s in grid:
        assert set(s.labels) == {"grid_t"}
        assert s.value == pytest.approx(float(s.labels["grid_t"]), rel=1e-5)
    ceil = [s for f in registry for s in f.samples if s.name == "tbg_temperature_ceiling"]
    assert any(s.labels.get("model_name") == "smollm2" and s.value == 0.05 for s in ceil), ceil
