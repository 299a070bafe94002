"""Grafana dashboards for tbg-proxy, as code (plain dicts; Grafana >= 10.0, schemaVersion 38).

Run `python -m grafana.dashboards` to regenerate the committed JSON in grafana/dashboards/;
tests/monitoring checks it is not stale and validates every query against a real Prometheus.

The T_bg panels read the recording rules of deploy/prometheus/rules (pooled over proxy replicas);
raw counters are only ever read through rate()/increase() with `$__rate_interval`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "dashboards"
DS: JSON = {"type": "prometheus", "uid": "${datasource}"}
F = 'upstream=~"$upstream", model_name=~"$model_name"'  # the usual label filter
FU = 'upstream=~"$upstream"'
RI = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    heatmap: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries | heatmap | bargauge | stat
    width: int = 12
    height: int = 8
    dashed_refs: tuple[str, ...] = ()  # refIds drawn dashed (interval bounds)
    extra_defaults: JSON = field(default_factory=dict)


def _q(expr: str, legend: str = "", **kw: bool) -> Query:
    return Query(expr=expr, legend=legend, **kw)


def _quantiles(metric: str, by: str, sel: str, qs: tuple[float, ...]) -> tuple[Query, ...]:
    return tuple(
        _q(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{RI}])))",
            f"p{round(q * 100)} " + " ".join(f"{{{{{lab.strip()}}}}}" for lab in by.split(",")),
        )
        for q in qs
    )


def _zero_if_none(expr: str, fallback: str) -> str:
    """`expr`, or 0 per `fallback` series when `expr` has no series yet (shows 0, not "No data")."""
    return f"{expr}\nor\n{fallback} * 0"


# --- dashboards -----------------------------------------------------------------------------------


def overview_panels() -> list[Panel]:
    um = "upstream, model_name"
    requests = f"sum by ({um}) (rate(tbg_requests_total{{{F}}}[{RI}]))"
    return [
        Panel(
            "Share of your traffic these numbers describe",
            "T_bg describes the greedy (temperature-0) requests only: their share of all requests "
            "through the proxy to each model, and the share actually replayed and compared (the "
            "sample the estimate comes from). Seeded, sampled (T > 0), n > 1 and unsupported "
            "routes are not in it: GET /tbg's `measured` block and `tbg status` give the reasons.",
            "percentunit",
            (
                _q(
                    f"sum by ({um}) (rate(tbg_shadow_eligible_total{{{F}}}[{RI}]))\n/\n" + requests,
                    "greedy {{upstream}} {{model_name}}",
                ),
                _q(
                    f"sum by ({um}) (rate(tbg_shadow_replayed_total{{{F}}}[{RI}]))\n/\n" + requests,
                    "compared {{upstream}} {{model_name}}",
                ),
            ),
            kind="stat",
            width=24,
            height=4,
        ),
        Panel(
            "T_bg (pooled fleet estimate, 95 % interval)",
            "Background temperature: the temperature at which an ideal copy of the model would vary "
            "as much as this stack does at T=0. Pooled over proxy replicas from the per-grid "
            "log-likelihood counters over 1h (recording rules upstream_model_name:tbg_temperature*:"
            "mle1h). Dashed: 95 % profile-likelihood bounds (with nothing diverged: estimate 0 and "
            "a one-sided upper bound). Red: configured ceiling.",
            "none",
            (
                _q(
                    f"upstream_model_name:tbg_temperature:mle1h{{{F}}}",
                    "{{upstream}} {{model_name}}",
                ),
                _q(
                    f"upstream_model_name:tbg_temperature_lower:mle1h{{{F}}}",
                    "lower {{upstream}} {{model_name}}",
                ),
                _q(
                    f"upstream_model_name:tbg_temperature_upper:mle1h{{{F}}}",
                    "upper {{upstream}} {{model_name}}",
                ),
                _q(
                    'max by (model_name) (tbg_temperature_ceiling{model_name=~"$model_name"})',
                    "ceiling {{model_name}}",
                ),
            ),
            width=24,
            dashed_refs=("B", "C", "D"),
        ),
        Panel(
            "T_bg per replica (local estimate)",
            "Each proxy replica's own online estimate (exponentially weighted, not pooled), by "
            "estimator method. Use it to spot a replica that disagrees with the fleet.",
            "none",
            (_q(f"tbg_temperature{{{F}}}", "{{instance}} {{upstream}} {{model_name}} {{method}}"),),
        ),
        Panel(
            "Divergence ratio",
            "Fraction of compared run pairs (primary vs replay, replay vs replay) whose token "
            "sequences differ, pooled over replicas over 1h.",
            "percentunit",
            (
                _q(
                    f"upstream_model_name:tbg_divergence:ratio_rate1h{{{F}}}",
                    "{{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "Divergence hazard (per token)",
            "Diverged pairs per token compared (the tokens up to the first divergence or the end), "
            "pooled over 1h. P(a k-token answer diverges) ≈ 1 − exp(−hazard·k).",
            "none",
            (
                _q(
                    f"upstream_model_name:tbg_divergence_hazard:ratio_rate1h{{{F}}}",
                    "{{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "First divergence position",
            "Distribution of the token index at which two runs of the same request first differ "
            "(diverged pairs only), per $__rate_interval.",
            "none",
            (
                _q(
                    "sum by (le) (increase(tbg_first_divergence_position_tokens_bucket"
                    f"{{{F}}}[{RI}]))",
                    "{{le}}",
                    heatmap=True,
                ),
            ),
            kind="heatmap",
        ),
        Panel(
            "Logprob jitter σ and identical positions",
            "σ of the top-1/top-2 logprob gap difference between runs at shared positions "
            "(σ² = Σδ²/2N, pooled over 1h), and the fraction of positions with bit-identical "
            "logprobs. A deterministic stack has σ = 0 and 100 % identical.",
            "none",
            (
                _q(
                    f"upstream_model_name:tbg_jitter_sigma:rate1h{{{F}}}",
                    "σ {{upstream}} {{model_name}}",
                ),
                _q(
                    f"upstream_model_name:tbg_jitter_identical:ratio_rate1h{{{F}}}",
                    "identical {{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "Replay budget use",
            "Replay tokens per minute over the configured budget "
            "(tbg_shadow_replay_budget_tokens_per_minute), pooled over replicas. At 100 % "
            "sampled requests are dropped with reason=budget.",
            "percentunit",
            (
                _q(
                    f"upstream_model_name:tbg_shadow_replay_budget:utilization5m{{{F}}}",
                    "{{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "Replay outcomes and drops",
            "Sampled primaries per second and what became of them: replayed, failed, dropped by "
            "reason. sampled = replayed + dropped + failed.",
            "reqps",
            (
                _q(
                    f"sum by ({um}) (rate(tbg_shadow_sampled_total{{{F}}}[{RI}]))",
                    "sampled {{upstream}} {{model_name}}",
                ),
                _q(
                    f"sum by ({um}) (rate(tbg_shadow_replayed_total{{{F}}}[{RI}]))",
                    "replayed {{upstream}} {{model_name}}",
                ),
                _q(
                    _zero_if_none(
                        f"sum by ({um}) (rate(tbg_shadow_failed_total{{{F}}}[{RI}]))",
                        f"sum by ({um}) (rate(tbg_shadow_sampled_total{{{F}}}[{RI}]))",
                    ),
                    "failed {{upstream}} {{model_name}}",
                ),
                _q(
                    _zero_if_none(
                        f"sum by ({um}, reason) (rate(tbg_shadow_dropped_total{{{F}}}[{RI}]))",
                        f"sum by ({um}) (rate(tbg_shadow_sampled_total{{{F}}}[{RI}]))",
                    ),
                    "dropped {{reason}} {{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "Comparisons per second",
            "Run pairs compared per second, pooled: the estimator's intake. Zero while traffic "
            "flows means the estimate is starved.",
            "ops",
            (
                _q(
                    f"sum by ({um}) (rate(tbg_pairs_compared_total{{{F}}}[{RI}]))",
                    "{{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "Estimate age",
            "Seconds since the freshest replica last updated its estimate "
            "(tbg_estimate_last_update_timestamp_seconds). Alert TbgEstimateStale above 30 min.",
            "s",
            (
                _q(
                    f"time() - max by ({um}) (tbg_estimate_last_update_timestamp_seconds{{{F}}})",
                    "{{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "Replay queue and in-flight replays",
            "Finished primaries waiting for replay and replays in flight, summed over replicas. A "
            "queue that stays full leads to queue_full drops.",
            "short",
            (
                _q("sum(tbg_shadow_queue_depth)", "queue depth"),
                _q("sum(tbg_shadow_replays_in_flight)", "replays in flight"),
            ),
        ),
        Panel(
            "Decision flip rate (tool calls, JSON fields)",
            "Share of replays of tools/JSON requests whose decision differed from their primary's: "
            "another tool, other arguments (compared as parsed JSON), another top-level field "
            "value, pooled over replicas. Intervals and per-field detail: GET /tbg (docs/shadow.md, "
            "Decisions).",
            "percentunit",
            (
                _q(
                    f"sum by ({um}, decision) (rate(tbg_decision_changed_total{{{F}}}[{RI}]))\n/\n"
                    f"sum by ({um}, decision) (rate(tbg_decision_replays_total{{{F}}}[{RI}]))",
                    "{{decision}} {{upstream}} {{model_name}}",
                ),
            ),
            width=24,
        ),
    ]


def capacity_panels() -> list[Panel]:
    umb = "upstream, model_name, load_bucket"
    return [
        Panel(
            "T_bg by load bucket",
            "Pooled T_bg estimate per load bucket (in-flight requests on the upstream when the "
            "primary ran: 1, 2, 4, …, 64+), over 1h. Batch-size variation under load is the main "
            "source of T_bg.",
            "none",
            (
                _q(
                    f"upstream_model_name_load_bucket:tbg_temperature:mle1h{{{F}}}",
                    "{{load_bucket}} {{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "T_bg vs load bucket (now, 95 % upper bound)",
            "Current pooled T_bg upper bound per load bucket: the highest bucket under the ceiling "
            "is a safe max concurrency for this upstream.",
            "none",
            (
                _q(
                    f"upstream_model_name_load_bucket:tbg_temperature_upper:mle1h{{{F}}}",
                    "{{load_bucket}} {{upstream}} {{model_name}}",
                    instant=True,
                ),
            ),
            kind="bargauge",
        ),
        Panel(
            "Divergence ratio by load bucket",
            "Fraction of compared pairs that diverged, per load bucket, pooled over 1h.",
            "percentunit",
            (
                _q(
                    f"upstream_model_name_load_bucket:tbg_divergence:ratio_rate1h{{{F}}}",
                    "{{load_bucket}} {{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "Divergence hazard by load bucket",
            "Diverged pairs per token compared (the tokens up to the first divergence or the end), per "
            "load bucket, pooled over 1h.",
            "none",
            (
                _q(
                    f"upstream_model_name_load_bucket:tbg_divergence_hazard:ratio_rate1h{{{F}}}",
                    "{{load_bucket}} {{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "Throughput and comparisons by load bucket",
            "Requests per second through the proxy per upstream, and shadow trials per second per "
            "load bucket (where the estimate's data comes from).",
            "reqps",
            (
                _q(
                    f"sum by (upstream) (rate(tbg_requests_total{{{F}}}[{RI}]))",
                    "requests {{upstream}}",
                ),
                _q(
                    f"sum by ({umb}) (rate(tbg_trials_total{{{F}}}[{RI}]))",
                    "trials {{load_bucket}} {{upstream}} {{model_name}}",
                ),
            ),
        ),
        Panel(
            "Load: in-flight requests",
            "Requests in flight per upstream (the load the buckets are made of).",
            "short",
            (_q(f"sum by (upstream) (tbg_in_flight_requests{{{FU}}})", "{{upstream}}"),),
        ),
        Panel(
            "Latency vs load",
            "Request duration percentiles per upstream (through the proxy, full response).",
            "s",
            _quantiles("tbg_request_duration_seconds", "upstream", F, (0.5, 0.95)),
            width=24,
        ),
    ]


def traffic_panels() -> list[Panel]:
    return [
        Panel(
            "Requests per second",
            "Requests through the proxy by route and HTTP status.",
            "reqps",
            (
                _q(
                    f"sum by (route, status) (rate(tbg_requests_total{{{F}}}[{RI}]))",
                    "{{route}} {{status}}",
                ),
            ),
        ),
        Panel(
            "In-flight requests",
            "Requests currently being forwarded, per upstream.",
            "short",
            (_q(f"sum by (upstream) (tbg_in_flight_requests{{{FU}}})", "{{upstream}}"),),
        ),
        Panel(
            "Request latency",
            "Full request duration percentiles by route (client view, through the proxy).",
            "s",
            _quantiles("tbg_request_duration_seconds", "route", F, (0.5, 0.9, 0.99)),
        ),
        Panel(
            "Time to first byte",
            "Time until the first response byte (≈ TTFT for streams) percentiles by route.",
            "s",
            _quantiles("tbg_time_to_first_byte_seconds", "route", F, (0.5, 0.9, 0.99)),
        ),
        Panel(
            "Errors",
            "Upstream transport errors per second by kind (connect, timeout, reset, protocol) and "
            "5xx answers by status; 0 when there are none.",
            "reqps",
            (
                _q(
                    _zero_if_none(
                        f"sum by (upstream, kind) (rate(tbg_upstream_errors_total{{{FU}}}[{RI}]))",
                        f"sum by (upstream) (rate(tbg_requests_total{{{FU}}}[{RI}]))",
                    ),
                    "{{upstream}} {{kind}}",
                ),
                _q(
                    _zero_if_none(
                        f'sum by (upstream, status) (rate(tbg_requests_total{{{F}, status=~"5.."}}[{RI}]))',
                        f"sum by (upstream) (rate(tbg_requests_total{{{F}}}[{RI}]))",
                    ),
                    "{{upstream}} {{status}}",
                ),
            ),
        ),
        Panel(
            "Rejected requests",
            "Requests rejected by the proxy itself: bodies over the size limit, failed client "
            "authentication; 0 when there are none.",
            "reqps",
            (
                _q(
                    _zero_if_none(
                        f"sum by (route) (rate(tbg_request_body_too_large_total[{RI}]))",
                        f"sum by (route) (rate(tbg_requests_total[{RI}]))",
                    ),
                    "too large {{route}}",
                ),
                _q(
                    _zero_if_none(
                        f"sum by (route) (rate(tbg_auth_failures_total[{RI}]))",
                        f"sum by (route) (rate(tbg_requests_total[{RI}]))",
                    ),
                    "auth failed {{route}}",
                ),
            ),
        ),
        Panel(
            "Proxy added latency",
            "Time spent in the proxy itself (upstream wait excluded), percentiles by route. "
            "Target p99 ≤ 1 ms; alert TbgProxyAddedLatencyHigh above 5 ms.",
            "s",
            _quantiles("tbg_proxy_added_seconds", "route", "", (0.5, 0.99)),
            width=24,
        ),
    ]


DASHBOARDS: dict[str, tuple[str, str]] = {
    # file stem: (uid, title)
    "tbg-overview": ("tbg-overview", "tbg-proxy / T_bg overview"),
    "tbg-capacity": ("tbg-capacity", "tbg-proxy / T_bg capacity planning"),
    "tbg-traffic": ("tbg-traffic", "tbg-proxy / proxy traffic"),
}


def panels_for(stem: str) -> list[Panel]:
    from grafana.canary import canary_panels  # the live canary's row closes the overview

    return {"tbg-overview": lambda: [*overview_panels(), *canary_panels()],
            "tbg-capacity": capacity_panels, "tbg-traffic": traffic_panels}[stem]()  # fmt: skip


# --- JSON model -----------------------------------------------------------------------------------


def _variables() -> list[JSON]:
    def query_var(name: str, query: str) -> JSON:
        return {
            "name": name,
            "label": name,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
            "hide": 0,
        }

    return [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
        },
        query_var("upstream", "label_values(tbg_requests_total, upstream)"),
        query_var(
            "model_name", 'label_values(tbg_requests_total{upstream=~"$upstream"}, model_name)'
        ),
    ]


def _panel_json(p: Panel, pid: int, x: int, y: int) -> JSON:
    targets: list[JSON] = []
    for i, q in enumerate(p.queries):
        t: JSON = {
            "refId": chr(ord("A") + i),
            "datasource": DS,
            "expr": q.expr,
            "legendFormat": q.legend or "__auto",
            "range": not q.instant,
            "instant": q.instant,
            "editorMode": "code",
        }
        if q.heatmap:
            t["format"] = "heatmap"
        targets.append(t)
    overrides: list[JSON] = [
        {
            "matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "custom.fillOpacity", "value": 0},
            ]
            + (
                [{"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]
                if ref == p.dashed_refs[-1] and "ceiling" in p.queries[ord(ref) - 65].legend
                else []
            ),
        }
        for ref in p.dashed_refs
    ]
    defaults: JSON = {"unit": p.unit, **p.extra_defaults}
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False}  # fmt: skip
    options: JSON
    if p.kind == "heatmap":
        options = {
            "calculate": False,
            "yAxis": {"unit": p.unit},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges"},
            "rowsFrame": {"layout": "auto"},
        }
    elif p.kind == "bargauge":
        options = {"orientation": "horizontal", "displayMode": "gradient",
                   "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}  # fmt: skip
    else:
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options,
    }


def dashboard(stem: str) -> JSON:
    uid, title = DASHBOARDS[stem]
    panels: list[JSON] = []
    x = y = 0
    row_h = 0
    for pid, p in enumerate(panels_for(stem), start=1):
        if x + p.width > 24:
            x, y = 0, y + row_h
            row_h = 0
        panels.append(_panel_json(p, pid, x, y))
        x += p.width
        row_h = max(row_h, p.height)
    return {
        "uid": uid,
        "title": title,
        "description": "Generated by grafana/dashboards.py (tbg-proxy); do not edit by hand.",
        "tags": ["tbg-proxy"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 38,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [
            {"title": "tbg-proxy", "type": "dashboards", "tags": ["tbg-proxy"], "asDropdown": True}
        ],
        "templating": {"list": _variables()},
        "panels": panels,
    }


def render(stem: str) -> str:
    return json.dumps(dashboard(stem), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def outputs() -> dict[str, str]:
    return {f"{stem}.json": render(stem) for stem in DASHBOARDS}


def write(directory: Path = OUT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in outputs().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    for path in write(Path(argv[0]) if argv else OUT_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
