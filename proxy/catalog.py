"""Which upstream serves a model, and the `model_name` label it gets: the config's `models:` lists
first (pinned), then what each upstream with `model_discovery` last listed at `/v1/models`.

A model nobody pins or lists goes to `default_upstream` under the label `other`, as without
discovery. A model pinned to one upstream keeps it even when another lists it; one listed by two
upstreams goes to the first in config order. Each upstream contributes at most
`model_discovery.max_models` names (in the order listed), so a listing cannot grow the label set
without bound; a model that disappears from the listing falls back to `other` at the next refresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any


def listed_models(payload: Any, limit: int) -> tuple[str, ...]:
    """The `id`s of an OpenAI `/v1/models` answer, in order, without repeats, at most `limit`."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if not isinstance(data, list):
        raise ValueError("no `data` list in the models listing")
    ids: dict[str, None] = {}
    for entry in data:
        model = entry.get("id") if isinstance(entry, Mapping) else None
        if isinstance(model, str) and model and len(model) <= 256:
            ids.setdefault(model, None)
            if len(ids) >= limit:
                break
    return tuple(ids)


class ModelCatalog:
    """Routing by model: pinned names from config, discovered ones per upstream (event loop only;
    the routing table is rebuilt on each change, so a lookup is one dict read)."""

    def __init__(self, order: Sequence[str], pinned: Mapping[str, str]) -> None:
        self._order = tuple(order)  # upstream names in config order
        self._pinned = dict(pinned)  # model -> upstream
        self._listed: dict[str, tuple[str, ...]] = {}
        self._table: Mapping[str, str] = MappingProxyType(dict(self._pinned))

    def upstream_of(self, model: str) -> str | None:
        return self._table.get(model)

    def discovered(self, upstream: str) -> tuple[str, ...]:
        """What `upstream` listed last (pinned names included as listed)."""
        return self._listed.get(upstream, ())

    def routed_here(self, upstream: str) -> tuple[str, ...]:
        """The discovered models that route to `upstream` (not pinned elsewhere, not listed
        first by an upstream earlier in the config)."""
        return tuple(m for m in self.discovered(upstream) if self._table.get(m) == upstream)

    def update(self, upstream: str, models: Iterable[str]) -> None:
        self._listed[upstream] = tuple(models)
        table = dict(self._pinned)
        for name in self._order:
            for model in self._listed.get(name, ()):
                table.setdefault(model, name)
        self._table = MappingProxyType(table)
