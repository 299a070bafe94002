"""PNG plots (matplotlib, Agg backend; the optional `plots` extra, installed by scripts/setup).

Written for someone who has not read the paper: plain-language titles and axis labels, the
interval drawn as a band, a one-line caption of how to read the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from measure.analysis import ProfileCurve, Survival

INSTALL_HINT = "plots skipped: matplotlib is not installed (pip install 'tbg-proxy[plots]')"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(INSTALL_HINT) from None
    matplotlib.use("Agg", force=True)  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _caption(fig: Any, text: str) -> None:
    fig.text(0.01, 0.01, text, fontsize=8, color="0.3", ha="left", va="bottom", wrap=True)


def plot_survival(s: Survival, path: Path, *, title_extra: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    fig.subplots_adjust(bottom=0.2)
    # Step function starting at S(0) = 1; censored pairs never drop the curve.
    end = max(s.horizon, *s.times) if s.times else s.horizon
    xs = [0.0, *s.times, end]
    ys = [1.0, *s.survival, s.survival[-1] if s.survival else 1.0]
    lo = [1.0, *s.lower, s.lower[-1] if s.lower else 1.0]
    hi = [1.0, *s.upper, s.upper[-1] if s.upper else 1.0]
    band = f"{100 * s.level:g} % confidence band"
    ax.fill_between(xs, lo, hi, step="post", alpha=0.25, color="C0", label=band)
    ax.step(xs, ys, where="post", color="C0", lw=2, label="share of run pairs still identical")
    ax.set_ylim(min(0.0, min(lo)) - 0.02, 1.02)
    ax.set_xlim(left=0)
    ax.set_xlabel("position in the answer (tokens)")
    ax.set_ylabel("share of run pairs identical so far")
    ax.set_title(
        f"How long do two temperature-0 answers to the same prompt agree?{title_extra}\n"
        f"{s.pairs} run pairs, {s.diverged} diverged",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    _caption(
        fig,
        "A perfectly reproducible server stays at 1.0. Each step down: some pairs of answers "
        "to the same prompt first differ at that token (Kaplan–Meier estimate).",
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profile(c: ProfileCurve, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    fig.subplots_adjust(bottom=0.2)
    pct = f"{100 * c.level:g} %"
    ax.plot(c.temperatures, c.drop, color="C0", lw=2, label="log-likelihood (relative to best)")
    if c.one_sided or abs(c.threshold_upper - c.threshold) < 0.25:
        ax.axhline(
            c.threshold_upper, color="C3", ls="--", lw=1, label=f"threshold of the {pct} interval"
        )
    else:  # the upper end uses a small-count corrected threshold
        ax.axhline(
            c.threshold, color="C3", ls="--", lw=1, label=f"threshold of the lower end ({pct})"
        )
        ax.axhline(
            c.threshold_upper, color="C3", ls=":", lw=1, label=f"threshold of the upper end ({pct})"
        )
    lo = c.lower if c.lower > 0 else c.temperatures[0]
    ax.axvspan(lo, c.upper, color="C2", alpha=0.15, label=f"{pct} interval")
    if c.one_sided:
        ax.axvline(c.upper, color="C2", lw=1.5)
        head = f"T_bg estimate 0 (no divergence scored); {pct} upper bound {c.upper:.3g}"
    else:
        ax.axvline(c.estimate, color="k", lw=1.5, label=f"estimate T_bg = {c.estimate:.3g}")
        head = f"T_bg = {c.estimate:.3g}, {pct} interval [{c.lower:.3g}, {c.upper:.3g}]"
    ax.set_xscale("log")
    ymin = max(min(c.drop), 4 * min(c.threshold, c.threshold_upper))
    ax.set_ylim(ymin, max(0.5, -0.1 * ymin))
    ax.set_xlabel("background temperature T (log scale)")
    ax.set_ylabel("log-likelihood minus its maximum")
    ax.set_title(f"Which temperatures explain the observed answers?\n{head}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=8)
    _caption(
        fig,
        "Temperatures where the curve stays above the dashed line are consistent with the data "
        "(profile likelihood, Boltzmann model on the reported top-k logprobs).",
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(
    levels: Sequence[int],
    estimate: Sequence[float | None],
    lower: Sequence[float | None],
    upper: Sequence[float | None],
    throughput: Sequence[float | None],
    path: Path,
    *,
    ceiling: float | None,
    level: float,
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    fig.subplots_adjust(bottom=0.3, right=0.86)
    nan = float("nan")

    def f(xs: Sequence[float | None]) -> list[float]:
        return [nan if x is None else x for x in xs]

    pct = f"{100 * level:g} %"
    ax.fill_between(levels, f(lower), f(upper), color="C0", alpha=0.2, label=f"T_bg {pct} interval")
    ax.plot(levels, f(estimate), "o-", color="C0", lw=2, label="T_bg estimate")
    if ceiling is not None:
        ax.axhline(ceiling, color="C3", ls="--", lw=1, label=f"ceiling {ceiling:g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(levels), [str(x) for x in levels])
    ax.set_xlabel("load: concurrent requests")
    ax.set_ylabel("background temperature T_bg", color="C0")
    top = max([x for x in f(upper) + f(estimate) if x == x] + [ceiling or 0.0, 1e-3])
    ax.set_ylim(-0.03 * top, 1.08 * top)  # the 0 estimates stay visible above the axis
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(levels, f(throughput), "s--", color="C1", lw=1.5, label="throughput")
    ax2.set_ylabel("throughput (generated tokens / s)", color="C1")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, 0.07))
    ax.set_title(
        "Reproducibility vs load: T_bg (left axis) and throughput (right axis)", fontsize=10
    )
    _caption(
        fig,
        "T_bg 0 = the same prompt always gets the same answer at temperature 0. Higher load "
        "usually buys throughput at the cost of reproducibility.",
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
