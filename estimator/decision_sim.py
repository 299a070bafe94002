"""Simulated decision flips with known truth, for the coverage of `estimator.decision_rates`.

A world of prompts whose flip propensity q differs (q ~ Beta(a, b), plus a share of prompts that
never flip): each run of a prompt takes its modal decision with probability 1 − q, else one of
`alternatives` others uniformly. A replay flips when it decides otherwise than the primary, so the
replays of one trial are correlated through their shared primary, and through their prompt's q.
The per-replay flip probability of a prompt is 1 − Σ_j π_j², its population mean the truth.
Replays per trial vary (1..max_replays: some replays fail), independent of q.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from estimator.model import Run, ToolCall


@dataclass(frozen=True)
class FlipWorld:
    a: float = 0.4
    b: float = 6.0
    never_share: float = 0.3  # prompts that never flip
    alternatives: int = 2
    max_replays: int = 3

    def truth(self) -> float:
        """E over prompts of P(replay != primary) = E[1 − (1−q)² − q²/alternatives]."""
        mean = self.a / (self.a + self.b)
        second = self.a * (self.a + 1) / ((self.a + self.b) * (self.a + self.b + 1))
        k = self.alternatives
        per_sensitive = 2 * mean - second - second / k
        return (1.0 - self.never_share) * per_sensitive

    def decisions(self, rng: np.random.Generator, trials: int) -> list[np.ndarray]:
        """Per trial, the decisions of its runs (0 = modal; the primary first)."""
        q = rng.beta(self.a, self.b, trials)
        q[rng.random(trials) < self.never_share] = 0.0
        replays = rng.integers(1, self.max_replays + 1, trials)
        out = []
        for qi, k in zip(q, replays, strict=True):
            runs = k + 1
            off = rng.random(runs) < qi
            alt = rng.integers(1, self.alternatives + 1, runs)
            out.append(np.where(off, alt, 0))
        return out

    def flips(self, rng: np.random.Generator, trials: int) -> tuple[np.ndarray, np.ndarray]:
        """(y, m) per trial: replays that flipped, replays compared."""
        ds = self.decisions(rng, trials)
        y = np.array([int((d[1:] != d[0]).sum()) for d in ds])
        m = np.array([len(d) - 1 for d in ds])
        return y, m


def tool_runs(decisions: np.ndarray) -> tuple[Run, ...]:
    """Runs whose tool-call decision is the simulated one: decision j calls tool `t{j}`."""
    return tuple(
        Run((), None, None, "", "tool_calls", tool_calls=(ToolCall(f"t{int(d)}", "{}"),))
        for d in decisions
    )
