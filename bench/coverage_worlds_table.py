"""Markdown tables of bench/coverage_worlds.py results (docs/coverage.md).

python -m bench.coverage_worlds_table bench/results/coverage_worlds_1x.json [more.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(x: float, n: int) -> str:
    return f"{round(100 * x)} ({round(x * n)}/{n})"


def main() -> None:
    rows, seen = [], set()
    for p in sys.argv[1:]:
        for r in json.loads(Path(p).read_text("utf-8")):
            key = (r["world"], r["runs"], r["trials"], r["sets"])
            if key not in seen:  # a cell run twice (same seeds) is the same cell
                seen.add(key)
                rows.append(r)
    print(
        "| world | replays | trials | sets | target | live | pooled | before (naive) | bootstrap"
        " | pooled width / oracle | design effect (median) | alert, truth 5 % below | alert,"
        " truth 20 % above |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["sets"]
        print(
            f"| {r['world']} | {r['runs'] - 1} | {r['trials']} | {n} | {r['target']} "
            f"| {_pct(r['live_coverage'], n)} | {_pct(r['pooled_coverage'], n)} "
            f"| {_pct(r['naive_coverage'], n)} | {_pct(r['boot_coverage'], n)} "
            f"| {r['pooled_width_over_oracle']:.2f} | {r['design_effect_median']:.2f} "
            f"| {_pct(r['alert_truth_5pct_below'], n)} | {_pct(r['alert_truth_20pct_above'], n)} |"
        )


if __name__ == "__main__":
    main()
