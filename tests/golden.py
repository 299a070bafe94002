"""Generated files compared as data, not as text.

A generator that folds floats through numpy writes its last digits as the CPU's kernels round
them, so a committed file can differ from a fresh run in the 16th digit on another machine and
mean the same thing. `differences` parses both sides (YAML, JSON or plain text) and compares:
structure, keys, strings and integers exactly; floats, and the numbers written inside strings
(PromQL expressions, promtool series such as ``0+0.825x60``), within a relative tolerance far
above rounding noise and far below any change a rule or a case could make.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import yaml

Kind = Literal["yaml", "json", "text"]

# A number inside text: optional sign, digits with an optional fraction, optional exponent.
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Tolerance:
    rel: float = 1e-9
    abs: float = 1e-12

    def close(self, a: float, b: float) -> bool:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=self.rel, abs_tol=self.abs)


def _is_int_text(token: str) -> bool:
    return re.fullmatch(r"[-+]?\d+", token) is not None


def text_differences(a: str, b: str, tol: Tolerance = Tolerance(), where: str = "") -> list[str]:
    """Where two texts differ once every number in them is read as a number."""
    sa, sb = NUMBER.split(a), NUMBER.split(b)
    na, nb = NUMBER.findall(a), NUMBER.findall(b)
    if sa != sb or len(na) != len(nb):
        return [f"{where}: text differs: {a[:200]!r} != {b[:200]!r}"]
    out = []
    for x, y in zip(na, nb, strict=True):
        if _is_int_text(x) and _is_int_text(y):
            same = int(x) == int(y)
        else:
            same = tol.close(float(x), float(y))
        if not same:
            out.append(f"{where}: {x} != {y}")
    return out


def _walk(a: Any, b: Any, tol: Tolerance, where: str) -> Iterator[str]:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        if a is not b and a != b:
            yield f"{where}: {a!r} != {b!r}"
    elif isinstance(a, int) and isinstance(b, int):
        if a != b:
            yield f"{where}: {a} != {b}"
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if not tol.close(float(a), float(b)):
            yield f"{where}: {a!r} != {b!r}"
    elif isinstance(a, str) and isinstance(b, str):
        yield from text_differences(a, b, tol, where)
    elif isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            yield f"{where}: keys {list(a)} != {list(b)}"
            return
        for key in a:
            yield from _walk(a[key], b[key], tol, f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{where}: {len(a)} items != {len(b)}"
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _walk(x, y, tol, f"{where}[{i}]")
    else:
        yield f"{where}: {type(a).__name__} {a!r} != {type(b).__name__} {b!r}"


def kind_of(name: str) -> Kind:
    if name.endswith((".yml", ".yaml")):
        return "yaml"
    return "json" if name.endswith(".json") else "text"


def differences(
    committed: str, generated: str, kind: Kind, tol: Tolerance = Tolerance()
) -> list[str]:
    """Every place where `generated` means something else than `committed` (empty: the same)."""
    if kind == "text":
        out = []
        la, lb = committed.splitlines(), generated.splitlines()
        if len(la) != len(lb):
            return [f"{len(la)} lines != {len(lb)}"]
        for i, (x, y) in enumerate(zip(la, lb, strict=True)):
            out.extend(text_differences(x, y, tol, f"line {i + 1}"))
        return out
    load = yaml.safe_load if kind == "yaml" else json.loads
    return list(_walk(load(committed), load(generated), tol, "$"))


def assert_same_data(committed: str, generated: str, name: str, hint: str) -> None:
    diffs = differences(committed, generated, kind_of(name))
    shown = "\n  ".join(diffs[:10])
    assert not diffs, f"{name} is stale ({len(diffs)} differences; {hint}):\n  {shown}"
