"""Backend fingerprints out: Prometheus families and the /tbg block per key (the `tbg status`
line: proxy.shadow.fingerprint_text).

Series budget per (replica, upstream, model_name): 10 at most, whatever the fingerprints —
`tbg_backend_fingerprint_changes_total` (1), `tbg_backend_fingerprint_info` (1: the current
fingerprint only; a replaced one's series ends), and per epoch (`epoch` = current | previous)
`tbg_temperature_by_epoch`, `_lower`, `_upper` and `tbg_trials_by_epoch` (8). The fingerprint
string is a label of the info series alone; the per-epoch series are joined to it by
(upstream, model_name), so a change does not mint new estimate series.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.shadow.fingerprints import Epoch, FingerprintSummary
from proxy.shadow.view import Key, ShadowView

UM = ["upstream", "model_name"]
UME = ["upstream", "model_name", "epoch"]


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def families(view: ShadowView) -> Iterator[Metric]:
    changes = CounterMetricFamily(
        "tbg_backend_fingerprint_changes",
        "Backend fingerprint changes (the dominant system_fingerprint replaced by another)",
        labels=UM,
    )
    info = GaugeMetricFamily(
        "tbg_backend_fingerprint_info",
        "The current backend fingerprint (system_fingerprint) of an upstream and model: 1",
        labels=[*UM, "fingerprint"],
    )
    est = GaugeMetricFamily(
        "tbg_temperature_by_epoch", "T_bg of the current/previous fingerprint epoch", labels=UME
    )
    lo = GaugeMetricFamily(
        "tbg_temperature_by_epoch_lower", "T_bg lower 95% bound per fingerprint epoch", labels=UME
    )
    hi = GaugeMetricFamily(
        "tbg_temperature_by_epoch_upper", "T_bg upper 95% bound per fingerprint epoch", labels=UME
    )
    trials = GaugeMetricFamily(
        "tbg_trials_by_epoch", "Trials the fingerprint epoch's backend answered", labels=UME
    )
    for summary in view.fingerprints:
        um = list(summary.key)
        changes.add_metric(um, float(summary.changes))
        if summary.current is not None:
            info.add_metric([*um, summary.current.fingerprint], 1.0)
        for name, epoch in (("current", summary.current), ("previous", summary.previous)):
            if epoch is None:
                continue
            labels = [*um, name]
            est.add_metric(labels, epoch.snapshot.estimate)
            lo.add_metric(labels, epoch.snapshot.lower)
            hi.add_metric(labels, epoch.snapshot.upper)
            trials.add_metric(labels, float(epoch.trials))
    yield from (changes, info, est, lo, hi, trials)


def _epoch_json(epoch: Epoch | None) -> dict[str, Any] | None:
    if epoch is None:
        return None
    snap = epoch.snapshot
    return {
        "fingerprint": epoch.fingerprint,
        "since": epoch.since,
        "until": epoch.until,
        "trials": epoch.trials,  # answered by this backend, mixed trials included
        "compared_trials": snap.trials,  # of those, compared like with like: the estimate's
        "estimate": _num(snap.estimate),
        "lower": _num(snap.lower),
        "upper": _num(snap.upper),
        "method": snap.method,
        "pairs": snap.pairs,
        "diverged": snap.diverged,
    }


def summary_json(summary: FingerprintSummary) -> dict[str, Any]:
    return {
        "current": _epoch_json(summary.current),
        "previous": _epoch_json(summary.previous),
        "changes": summary.changes,
        "last_change_at": summary.last_change_at,
        "moved": summary.moved,  # "up" / "down": the two epochs' intervals are disjoint
        "trials_by_fingerprint": dict(summary.counts),
        "other_trials": summary.other,
        "unknown_trials": summary.unknown,
        "mixed_trials": summary.mixed,
    }


def by_key(view: ShadowView) -> dict[Key, dict[str, Any]]:
    """The /tbg `fingerprints` block of every key that showed a fingerprint."""
    return {summary.key: summary_json(summary) for summary in view.fingerprints}
