"""Decision tallies folded per (upstream, model_name) and per request class, and their published,
immutable view.

Owned by the Aggregator's ShadowState (event loop only). A trial of kind `tools` or `json` arrives
with its `DecisionTally` (estimator.decisions, computed by the Worker); the sums it folds into are
additive and immutable (estimator.decision_rates.DecisionSums), so publishing is a copy of two small
dicts. Memory is bounded: configured keys × at most 12 request classes, each with at most
`decision_fields` named fields plus the pooled ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from estimator.decision_rates import DecisionSums
from estimator.decisions import DecisionTally
from proxy.shadow.classes import RequestClass

Key = tuple[str, str]  # (upstream, model_name), as proxy.shadow.view.Key
ClassKey = tuple[str, str, RequestClass]


@dataclass(frozen=True, slots=True)
class DecisionsView:
    """Every key's decision sums, and each request class's."""

    overall: tuple[tuple[Key, DecisionSums], ...] = ()
    by_class: tuple[tuple[ClassKey, DecisionSums], ...] = ()

    def get(self, key: Key) -> DecisionSums | None:
        for k, sums in self.overall:
            if k == key:
                return sums
        return None

    def classes(self, key: Key) -> list[tuple[RequestClass, DecisionSums]]:
        """The request classes of `key` with decisions, in the classes' order."""
        out = [(c, s) for (u, m, c), s in self.by_class if (u, m) == key]
        return sorted(out, key=lambda item: item[0].order())


NO_DECISIONS = DecisionsView()  # immutable: safe as a shared default


class DecisionsState:
    def __init__(self, max_fields: int = 16) -> None:
        self._max_fields = max_fields
        self._overall: dict[Key, DecisionSums] = {}
        self._by_class: dict[ClassKey, DecisionSums] = {}
        self._view = DecisionsView()
        self._dirty = False

    def fold(self, key: Key, request_class: RequestClass | None, tally: DecisionTally) -> None:
        self._overall[key] = self._overall.get(key, DecisionSums()).fold(tally, self._max_fields)
        if request_class is not None:
            ckey = (key[0], key[1], request_class)
            sums = self._by_class.get(ckey, DecisionSums())
            self._by_class[ckey] = sums.fold(tally, self._max_fields)
        self._dirty = True

    def publish(self) -> DecisionsView:
        if self._dirty:
            self._view = DecisionsView(tuple(self._overall.items()), tuple(self._by_class.items()))
            self._dirty = False
        return self._view
