"""Dashboards as code: the committed JSON is what grafana/dashboards.py generates; the JSON model
follows the house rules; every panel, variable and rule expression parses in a real Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from grafana import dashboards, promql, queries
from tests.golden import assert_same_data
from tests.monitoring.promserver import PROMETHEUS, Prometheus, run_prometheus

DASHES = {p.name: json.loads(p.read_text()) for p in queries.dashboard_files()}


def test_committed_json_is_not_stale() -> None:
    generated = dashboards.outputs()
    committed = {p.name: p.read_text(encoding="utf-8") for p in queries.dashboard_files()}
    assert set(committed) == set(generated)
    for name, text in generated.items():
        assert_same_data(committed[name], text, name, "run python -m grafana.dashboards")


def test_the_three_dashboards_exist() -> None:
    assert {d["uid"] for d in DASHES.values()} == {"tbg-overview", "tbg-capacity", "tbg-traffic"}


@pytest.mark.parametrize("name", sorted(DASHES))
def test_json_model(name: str) -> None:
    dash = DASHES[name]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in ("upstream", "model_name"):
        assert variables[var]["type"] == "query" and variables[var]["includeAll"]
        assert variables[var]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in queries.panels(dash)]
    assert len(ids) == len(set(ids))
    for panel in queries.panels(dash):
        title = panel["title"]
        assert panel["description"].strip(), title
        assert panel["fieldConfig"]["defaults"]["unit"], title
        assert panel["datasource"]["uid"] == "${datasource}", title
        assert panel["targets"], title
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", title
            expr = t["expr"]
            # every range is $__rate_interval: no hard-coded windows in panels
            ranges = re.findall(r"\[([^\]]*)\]", expr)
            assert all(r == "$__rate_interval" for r in ranges), (title, ranges)
            sub = promql.substitute(expr)
            assert promql.counter_misuse(sub, set()) == [], (title, expr)
            # only the dashboard's variables are used
            for v in re.findall(r"\$(\w+)", expr):
                assert v in variables or v.startswith("__"), (title, v)


def test_panel_filters_use_the_variables() -> None:
    for e in queries.dashboard_expressions():
        names = promql.metric_names(promql.substitute(e.expr))
        if any(n.startswith(("tbg_temperature", "upstream_model_name")) for n in names):
            assert "$model_name" in e.expr, e.where


def test_checker_detects_misuse() -> None:
    """The counter checker itself can fail."""
    assert promql.counter_misuse("sum(tbg_requests_total)", set()) == ["tbg_requests_total"]
    assert promql.counter_misuse("tbg_x_bucket{le='1'} > 0", set()) == ["tbg_x_bucket"]
    assert promql.counter_misuse("max_over_time(tbg_requests_total[5m])", set()) == [
        "tbg_requests_total"
    ]
    assert promql.counter_misuse("sum by (a) (rate(tbg_requests_total{a='b'}[1m]))", set()) == []
    assert promql.counter_misuse("tbg_odd", {"tbg_odd"}) == ["tbg_odd"]
    assert promql.metric_names("a:b:c offset 1d and on (x) sum by (y) (z)") == {"a:b:c", "z"}


# --- parse every expression in a real Prometheus --------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (scripts/setup --dev)")
    workdir: Path = tmp_path_factory.mktemp("prom-parse")
    with run_prometheus(workdir) as prom:
        yield prom


EXPRS = queries.all_expressions()


@pytest.mark.prometheus
def test_every_expression_parses(prometheus: Prometheus) -> None:
    assert len(EXPRS) > 60
    errors = []
    for e in EXPRS:
        body = prometheus.query_sync(promql.substitute(e.expr))
        if body.get("status") != "success":
            errors.append(f"{e.source} {e.where}: {body.get('error')}")
    assert not errors, "\n".join(errors)


@pytest.mark.prometheus
def test_a_broken_expression_is_rejected(prometheus: Prometheus) -> None:
    body = prometheus.query_sync("sum by (upstream (rate(tbg_requests_total[1m]))")
    assert body["status"] == "error" and body["errorType"] == "bad_data"
