"""GET /tbg: the live estimates as JSON, with sample counts, accounting and divergence exemplars.

Nothing of a prompt or a completion appears here unless `record_text: true` (not even the two
diverging tokens); exemplars carry a keyed request hash and the divergence's position.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from estimator.online import OnlineSnapshot
from proxy.shadow import fingerprint_export
from proxy.shadow.canary_report import canary_json
from proxy.shadow.classes import RequestClass
from proxy.shadow.coverage import measured
from proxy.shadow.decisions_report import decisions_json
from proxy.shadow.load import LOAD_BUCKETS
from proxy.shadow.seeded import report as seeded_report
from proxy.shadow.tap import ShadowTap
from proxy.status import render_text, wants_text
from proxy.ui.page import page_response, wants_html


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def snapshot_json(snap: OnlineSnapshot) -> dict[str, Any]:
    return {
        "method": snap.method,
        "estimate": _num(snap.estimate),
        "lower": _num(snap.lower),
        "upper": _num(snap.upper),
        # the interval's unit of independence, and how much wider than the per-position one it is
        "unit": "trial",
        "design_effect": _num(snap.design_effect),
        "trials": snap.trials,
        "diverged_trials": snap.diverged_trials,
        "pairs": snap.pairs,
        "diverged": snap.diverged,
        "tokens_at_risk": snap.tokens_at_risk,
        "effective_pairs": _num(snap.effective_pairs),
        "hazard": _num(snap.hazard),
        "hazard_lower": _num(snap.hazard_lower),
        "hazard_upper": _num(snap.hazard_upper),
        "exact_match_rate": _num(snap.exact_match_rate),
        "jitter_sigma": _num(snap.jitter_sigma),
        "p_identical": _num(snap.p_identical),
        "jitter_temperature": _num(snap.jitter_temperature),
    }


def class_json(request_class: RequestClass, snap: OnlineSnapshot) -> dict[str, Any]:
    """One request class's estimate: the class, then the estimate's headline fields."""
    return {
        **request_class.to_json(),
        "estimate": _num(snap.estimate),
        "lower": _num(snap.lower),
        "upper": _num(snap.upper),
        "trials": snap.trials,
        "pairs": snap.pairs,
        "diverged": snap.diverged,
        "method": snap.method,
    }


def report(tap: ShadowTap, *, tokens: bool = False) -> dict[str, Any]:
    """The last published view as a JSON-ready dict. Exemplars carry the diverging tokens only
    with `record_text` (they are completion text), or `tokens` (`tbg demo`, on its own terminal)."""
    view = tap.view()
    by_load: dict[tuple[str, str], dict[str, Any]] = {}
    order = {b: i for i, b in enumerate(LOAD_BUCKETS)}
    for (upstream, model, bucket), snap in sorted(
        view.load_snapshots(), key=lambda item: order.get(item[0][2], 99)
    ):
        by_load.setdefault((upstream, model), {})[bucket] = snapshot_json(snap)
    by_class: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (upstream, model, request_class), snap in sorted(
        view.class_snapshots(), key=lambda item: item[0][2].order()
    ):
        by_class.setdefault((upstream, model), []).append(class_json(request_class, snap))
    estimates: list[dict[str, Any]] = []
    fingerprints = fingerprint_export.by_key(view)
    for (upstream, model), snap, updated in view.snapshots():
        entry = {"upstream": upstream, "model_name": model, "last_update": updated}
        entry["age_seconds"] = max(0.0, time.time() - updated)  # how old the estimate is
        entry["eligible"] = view.eligible.get((upstream, model), 0)  # greedy requests seen
        entry.update(snapshot_json(snap))
        entry["by_load"] = by_load.get((upstream, model), {})
        entry["by_class"] = by_class.get((upstream, model), [])
        entry["ceiling"] = tap.config.policy(model).ceiling
        entry["fingerprints"] = fingerprints.get((upstream, model))  # None: none seen
        entry["decisions"] = decisions_json(
            view.decisions, (upstream, model), tap.config.decision_steps
        )
        estimates.append(entry)
    return {
        "estimates": estimates,
        "accounting": view.totals(),
        "eligible": sum(view.eligible.values()),  # greedy primaries seen, sampled or not
        "dropped_by_reason": view.drops_by_reason(),
        "queue_depth": tap.queue_depth(),
        "replays_in_flight": tap.load.replays_in_flight(),
        "exemplars": [
            _exemplar(e.to_json(), tokens or tap.config.record_text)
            for e in reversed(view.exemplars)
        ],
        "published_at": view.published_at,
        "config": {
            "replays": tap.config.replays,
            "augment_logprobs": tap.config.augment_logprobs,
            "top_logprobs": tap.config.top_logprobs,
            "half_life_trials": tap.config.half_life_trials,
            "record_text": tap.config.record_text,
        },
        "canary": canary_json(view, tap.config),  # live canaries side by side (docs/canary.md)
        "measured": measured(
            view.measured,
            view.eligible,
            view.totals(),
            view.drops_by_reason(),
            tap.untapped_requests(),
        ),
        "seeded": seeded_report(view.seeded, tap.config.decision_steps),
    }


def _exemplar(entry: dict[str, Any], tokens: bool) -> dict[str, Any]:
    if not tokens:
        entry.pop("token_a", None)
        entry.pop("token_b", None)
    return entry


def make_handler(tap: ShadowTap) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        if wants_html(request):  # a person with a browser: the live page (proxy/ui)
            return page_response(request)
        if wants_text(request.query, request.headers.get("Accept", "")):  # a person: tbg status
            return web.Response(text=render_text(report(tap)) + "\n", content_type="text/plain")
        return web.Response(body=orjson.dumps(report(tap)), content_type="application/json")

    return handle
