"""Decisions, not only tokens: how often a replay decides otherwise than its primary.

A tool call or a structured answer is compared token by token elsewhere; what an agent's owner acts
on is the decision it encodes. For one trial (primary first, then its replays) and the request's kind
(`tools`, `json`, `plain`), each replay is compared with the primary on:

- **tool**: the sequence of called tool names differs (a text answer is the empty sequence), for
  `tools` requests;
- **arguments**: among replays that called the same tools (at least one), some call's arguments
  differ *as data*: JSON parsed and compared as values (object key order, spacing and `1` vs `1.0`
  do not count; `true` vs `1` does). Arguments that do not parse as JSON on either side are compared
  as text and the replay is counted in `arguments_unparseable`;
- **field**: for `json` requests, the answer's content parsed as a JSON object and compared per
  top-level key: changed (both have it, values differ), added (only the replay has it), removed (only
  the primary). A replay counts as changed when any key is. Content that does not parse as an object
  on either side is compared as text and counted in `field_unparseable` (and under the pseudo-field
  `UNPARSED`). At most `max_fields` keys are tallied by name per trial, the rest pooled as `OTHER`.

A replay `any`-changed when it differs in any of its kind's decisions: the per-step flip rate an
agent run compounds (`estimator.decision_rates`). Pure functions over `Run`s; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from estimator.model import Run, ToolCall

DECISIONS: tuple[str, ...] = ("tool", "arguments", "field")
DECISION_KINDS: frozenset[str] = frozenset({"tools", "json"})
OTHER = "(other)"  # keys beyond the tracked ones, pooled
UNPARSED = "(unparsed)"  # content that is not a JSON object, compared as text
FIELD_NAME_LIMIT = 64  # characters of a key kept (keys name fields, they are not values)


@dataclass(frozen=True, slots=True)
class FieldTally:
    """Replays of one trial whose value of top-level key `name` changed, appeared, or vanished."""

    name: str
    changed: int = 0
    added: int = 0
    removed: int = 0

    @property
    def total(self) -> int:
        return self.changed + self.added + self.removed


@dataclass(frozen=True, slots=True)
class DecisionTally:
    """One trial's replays compared with its primary, decision by decision (replay counts).

    `*_compared` is the denominator of each decision: the replays where it was compared (tool:
    every replay of a `tools` trial; arguments: those that called the same tools; field: every
    replay of a `json` trial). `any_changed` counts replays that changed any of them."""

    kind: str
    replays: int
    tool_compared: int = 0
    tool_changed: int = 0
    arguments_compared: int = 0
    arguments_changed: int = 0
    arguments_unparseable: int = 0
    field_compared: int = 0
    field_changed: int = 0
    field_unparseable: int = 0
    any_changed: int = 0
    fields: tuple[FieldTally, ...] = ()

    def counts(self, decision: str) -> tuple[int, int]:
        """(compared, changed) for one of DECISIONS."""
        if decision == "tool":
            return self.tool_compared, self.tool_changed
        if decision == "arguments":
            return self.arguments_compared, self.arguments_changed
        if decision == "field":
            return self.field_compared, self.field_changed
        raise ValueError(f"unknown decision {decision!r}")


_UNPARSEABLE = object()


def parse_json(text: str) -> Any:
    """The JSON value of `text`, or the `_UNPARSEABLE` marker."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _UNPARSEABLE


def same_data(a: Any, b: Any) -> bool:
    """Equality of parsed JSON values as data: numbers by value (1 == 1.0), booleans apart from
    numbers, objects regardless of key order, arrays in order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_data(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_data(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _arguments(primary: Sequence[ToolCall], replay: Sequence[ToolCall]) -> tuple[bool, bool]:
    """(changed, unparseable) for two call sequences with the same tool names."""
    changed = unparseable = False
    for a, b in zip(primary, replay, strict=True):
        pa, pb = parse_json(a.arguments), parse_json(b.arguments)
        if pa is _UNPARSEABLE or pb is _UNPARSEABLE:
            unparseable = True
            changed |= a.arguments != b.arguments
        else:
            changed |= not same_data(pa, pb)
    return changed, unparseable


def _object(text: str) -> Mapping[str, Any] | None:
    value = parse_json(text)
    return value if isinstance(value, dict) else None


def field_changes(primary: Mapping[str, Any], replay: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, changed|added|removed) for each top-level key that differs, keys in sorted order."""
    out: list[tuple[str, str]] = []
    for key in sorted(primary.keys() | replay.keys()):
        if key not in replay:
            out.append((key, "removed"))
        elif key not in primary:
            out.append((key, "added"))
        elif not same_data(primary[key], replay[key]):
            out.append((key, "changed"))
    return out


def _field_name(key: str) -> str:
    return key[:FIELD_NAME_LIMIT]


def tally_trial(runs: Sequence[Run], kind: str, max_fields: int = 16) -> DecisionTally | None:
    """Each replay (runs[1:]) against the primary (runs[0]); None for a `plain` trial or one
    without replays."""
    if kind not in DECISION_KINDS or len(runs) < 2:
        return None
    primary, replays = runs[0], runs[1:]
    t = dict.fromkeys(
        ("tool_compared", "tool_changed", "arguments_compared", "arguments_changed",
         "arguments_unparseable", "field_compared", "field_changed", "field_unparseable",
         "any_changed"), 0,
    )  # fmt: skip
    fields: dict[str, dict[str, int]] = {}

    def bump(name: str, how: str) -> None:
        if name not in fields and len(fields) >= max_fields and name not in (OTHER, UNPARSED):
            name = OTHER
        slot = fields.setdefault(name, {"changed": 0, "added": 0, "removed": 0})
        slot[how] += 1

    names = tuple(c.name for c in primary.tool_calls)
    content = _object(primary.text) if kind == "json" else None
    for replay in replays:
        changed_any = False
        if kind == "tools":
            t["tool_compared"] += 1
            if tuple(c.name for c in replay.tool_calls) != names:
                t["tool_changed"] += 1
                changed_any = True
            elif names:
                t["arguments_compared"] += 1
                changed, unparseable = _arguments(primary.tool_calls, replay.tool_calls)
                t["arguments_changed"] += changed
                t["arguments_unparseable"] += unparseable
                changed_any |= changed
        else:
            t["field_compared"] += 1
            other = _object(replay.text)
            if content is None or other is None:
                t["field_unparseable"] += 1
                if primary.text != replay.text:
                    t["field_changed"] += 1
                    bump(UNPARSED, "changed")
                    changed_any = True
            else:
                diff = field_changes(content, other)
                for key, how in diff:
                    bump(_field_name(key), how)
                if diff:
                    t["field_changed"] += 1
                    changed_any = True
        t["any_changed"] += changed_any
    tallies = tuple(FieldTally(name, **counts) for name, counts in sorted(fields.items()))
    return DecisionTally(kind, len(replays), fields=tallies, **t)
