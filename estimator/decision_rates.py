"""Decision flip rates with intervals that hold when replays of one prompt are alike, and what a
per-step rate compounds to over an agent run.

The rate of a decision is r = Σ y_i / Σ m_i over trials i (y_i of the m_i replays compared in trial
i changed it): the chance that one more replay of a typical prompt decides otherwise. Replays of one
prompt are not independent (they share the primary they are compared with, its load and its prompt's
own sensitivity) and prompts differ in their flip rate, so a binomial interval over replays is too
narrow. The trial is the unit of independence:

- the ratio's cluster-robust (linearisation) variance v = n/(n−1) Σ (y_i − r m_i)² / (Σ m_i)²;
- Korn & Graubard's (1998) interval for a proportion from clustered data: a Clopper–Pearson interval
  at the effective sample size n* = r(1−r)/v (the replays count as n* independent ones), clamped to
  [trials, replays] (full to no correlation within a trial), times (z/t_{n−1})² for the few-trials
  degrees of freedom. With r = 0 or 1 there is no variance to read the correlation from: n* = the
  number of trials (the conservative end).

Every piece is an additive sum (n, Σy, Σm, Σy², Σm², Σym), so replicas and request classes pool by
adding. Coverage on heterogeneous simulated worlds: `bench/decision_coverage.py`, docs/shadow.md.

Compounding: an n-step agent run whose steps each flip with rate p diverges somewhere with
probability 1 − (1 − p)^n (steps taken as independent); the transform is monotone, so p's bounds map
to its bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from scipy import stats as st

from estimator.decisions import DECISIONS, OTHER, UNPARSED, DecisionTally

LEVEL = 0.95


@dataclass(frozen=True, slots=True)
class RatioSums:
    """Additive sums over trials of (y, m): y of the m replays compared changed."""

    trials: int = 0
    changed: int = 0
    compared: int = 0
    yy: int = 0
    mm: int = 0
    ym: int = 0

    def add(self, changed: int, compared: int) -> RatioSums:
        if compared <= 0:
            return self
        y, m = changed, compared
        return RatioSums(self.trials + 1, self.changed + y, self.compared + m,
                         self.yy + y * y, self.mm + m * m, self.ym + y * m)  # fmt: skip

    def __add__(self, other: RatioSums) -> RatioSums:
        return RatioSums(self.trials + other.trials, self.changed + other.changed,
                         self.compared + other.compared, self.yy + other.yy, self.mm + other.mm,
                         self.ym + other.ym)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rate:
    """A flip rate with its interval (`level`), from `trials` trials, `compared` replays."""

    estimate: float
    lower: float
    upper: float
    trials: int
    changed: int
    compared: int
    effective_replays: float  # n*: what the replays are worth as independent ones
    level: float = LEVEL

    @property
    def design_effect(self) -> float:
        """compared / n*: how much alike replays of one prompt widen the interval (>= 1)."""
        return self.compared / self.effective_replays if self.effective_replays > 0 else math.nan


def rate(sums: RatioSums, level: float = LEVEL) -> Rate:
    """The rate Σy/Σm with its clustered (Korn–Graubard) Clopper–Pearson interval."""
    n, m_total, y_total = sums.trials, sums.compared, sums.changed
    if n == 0 or m_total == 0:
        return Rate(math.nan, math.nan, math.nan, n, y_total, m_total, 0.0, level)
    r = y_total / m_total
    alpha = 1.0 - level
    if 0.0 < r < 1.0 and n >= 2:
        resid = sums.yy - 2.0 * r * sums.ym + r * r * sums.mm
        var = n / (n - 1) * max(resid, 0.0) / (m_total * m_total)
        n_eff = r * (1.0 - r) / var if var > 0 else float(m_total)
    else:
        n_eff = float(n)
    n_eff = min(max(n_eff, float(n)), float(m_total))
    if n >= 2:
        z = st.norm.ppf(1.0 - alpha / 2.0)
        n_eff *= (z / st.t.ppf(1.0 - alpha / 2.0, n - 1)) ** 2
    x = r * n_eff
    lower = 0.0 if x <= 0 else float(st.beta.ppf(alpha / 2.0, x, n_eff - x + 1.0))
    upper = 1.0 if x >= n_eff else float(st.beta.ppf(1.0 - alpha / 2.0, x + 1.0, n_eff - x))
    return Rate(r, lower, upper, n, y_total, m_total, n_eff, level)


def compound(p: float, steps: int) -> float:
    """P(an agent run of `steps` independent steps, each flipping with rate p, flips somewhere)."""
    if math.isnan(p):
        return math.nan
    return 1.0 - (1.0 - p) ** steps


@dataclass(frozen=True, slots=True)
class Compounded:
    steps: int
    estimate: float
    lower: float
    upper: float


def compounded(r: Rate, steps: Iterable[int]) -> tuple[Compounded, ...]:
    """The run-level divergence chance for each step count, bounds through the monotone map."""
    return tuple(
        Compounded(n, compound(r.estimate, n), compound(r.lower, n), compound(r.upper, n))
        for n in steps
    )


def _frozen(d: Mapping[str, RatioSums]) -> Mapping[str, RatioSums]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class DecisionSums:
    """Decision tallies folded over trials (immutable: `fold` returns a new one). Field names are
    tracked up to `max_fields`; later names pool under OTHER."""

    trials: int = 0
    replays: int = 0
    decisions: Mapping[str, RatioSums] = field(
        default_factory=lambda: _frozen({d: RatioSums() for d in DECISIONS})
    )
    any: RatioSums = RatioSums()
    arguments_unparseable: int = 0
    field_unparseable: int = 0
    fields: Mapping[str, RatioSums] = field(default_factory=lambda: _frozen({}))

    def fold(self, tally: DecisionTally, max_fields: int = 16) -> DecisionSums:
        decisions = {}
        for d, sums in self.decisions.items():
            compared, changed = tally.counts(d)
            decisions[d] = sums.add(changed, compared)
        fields = dict(self.fields)
        per_trial: dict[str, int] = {}
        for f in tally.fields:
            tracked = sum(name not in (OTHER, UNPARSED) for name in fields)
            name = f.name if f.name in fields or tracked < max_fields else OTHER
            fields.setdefault(name, RatioSums())
            per_trial[name] = per_trial.get(name, 0) + f.total
        for name, changed in per_trial.items():
            fields[name] = fields[name].add(
                min(changed, tally.field_compared), tally.field_compared
            )
        return replace(
            self,
            trials=self.trials + 1,
            replays=self.replays + tally.replays,
            decisions=_frozen(decisions),
            any=self.any.add(tally.any_changed, tally.replays),
            arguments_unparseable=self.arguments_unparseable + tally.arguments_unparseable,
            field_unparseable=self.field_unparseable + tally.field_unparseable,
            fields=_frozen(fields),
        )

    def field_rate(self, name: str, level: float = LEVEL) -> Rate:
        """A field's flip rate over every replay of a json trial (trials where the field did not
        change count as 0 of their replays)."""
        s = self.fields.get(name, RatioSums())
        total = self.decisions["field"]
        # trials where this field never changed: y = 0 of their m (their m's sums are the rest)
        rest = RatioSums(total.trials - s.trials, 0, total.compared - s.compared, 0,
                         total.mm - s.mm, 0)  # fmt: skip
        return rate(s + rest, level)
