"""compare.png: the two endpoints of an A/B side by side against load: T_bg with its interval
(left panel) and throughput (right panel). Same backend and conventions as measure.plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from measure.plots import _caption, _pyplot

if TYPE_CHECKING:
    from measure.sweep import LevelRow


def _nan(x: float | None) -> float:
    return float("nan") if x is None else x


def plot_compare(
    loads: Sequence[int],
    baseline: Sequence[LevelRow],
    candidate: Sequence[LevelRow],
    path: Path,
    *,
    level: float,
) -> None:
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.8))
    fig.subplots_adjust(bottom=0.26, wspace=0.3)
    pct = f"{100 * level:g} %"
    top = 1e-3
    for rows, name, color, shift in (
        (baseline, "baseline", "C0", 0.97),
        (candidate, "candidate", "C1", 1.03),
    ):
        xs = [x * shift for x in loads]  # side by side where the intervals overlap
        est = [_nan(r.t_bg) for r in rows]
        lo = [_nan(r.t_lower) for r in rows]
        hi = [_nan(r.t_upper) for r in rows]
        ax.fill_between(xs, lo, hi, color=color, alpha=0.18, label=f"{name} {pct} interval")
        err = [
            [e - lw if e == e and lw == lw else 0.0 for e, lw in zip(est, lo, strict=True)],
            [h - e if e == e and h == h else 0.0 for e, h in zip(est, hi, strict=True)],
        ]
        ax.errorbar(xs, est, yerr=err, fmt="o-", color=color, lw=2, capsize=4, label=name)
        top = max([top, *[v for v in hi + est if v == v]])
        tps = [_nan(r.throughput_tps) for r in rows]
        ax2.plot(loads, tps, "s-", color=color, lw=2, label=name)
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xticks(list(loads), [str(x) for x in loads])
        a.set_xlabel("load: concurrent requests")
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="upper left")
    ax.set_ylim(-0.03 * top, 1.1 * top)  # 0 estimates stay visible above the axis
    ax.set_ylabel("background temperature T_bg")
    ax.set_title("Randomness at temperature 0 (T_bg)", fontsize=10)
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("throughput (generated tokens / s)")
    ax2.set_title("Throughput", fontsize=10)
    fig.suptitle("Baseline vs candidate on the same prompts at each load", fontsize=11)
    _caption(
        fig,
        "T_bg 0: the same prompt always gets the same answer. Bands and bars: the interval of "
        "each endpoint's T_bg. The verdict and the cross-divergence are in the report.",
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
