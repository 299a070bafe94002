"""Just enough PromQL parsing to check our own expressions offline.

Not a PromQL parser (Prometheus itself checks syntax: `promtool check rules` and the query API in the
tests). This tokenizer finds the metric selectors of an expression and, for each one, whether it is the
range-vector argument of rate/increase/irate, so tests can check:
- every metric an expression reads is exported by the proxy (or recorded by our rules);
- counters and histogram series are only ever read through rate()/increase().
Grafana template variables are substituted first (`substitute`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
        "and", "or", "unless", "atan2", "inf", "nan",
    }
)  # fmt: skip
AGGREGATORS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile",
    }
)  # fmt: skip
COUNTER_FUNCS = frozenset({"rate", "increase", "irate"})
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")

# Values used offline for Grafana's template variables.
DEFAULT_VARS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "upstream": ".*",
    "model_name": ".*",
    "datasource": "prometheus",
}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>\[[^\]]*\])
  | (?P<dur>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>=(){},@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Selector:
    """One metric selector in an expression."""

    name: str
    in_range_function: str | None  # "rate"/"increase"/"irate" when it is that function's argument
    has_range: bool


def substitute(expr: str, variables: dict[str, str] | None = None) -> str:
    """Replace Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) with offline values."""
    values = {**DEFAULT_VARS, **(variables or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"unknown template variable ${name} in {expr!r}")
        return values[name]

    # `$1` inside a string (label_replace's replacement) is a regex group, not a variable.
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[(\w+)\]\]", repl, expr)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize {expr[pos : pos + 20]!r} in {expr!r}")
        kind = m.lastgroup or ""
        if kind not in ("ws", "comment"):
            out.append((kind, m.group()))
        pos = m.end()
    return out


def selectors(expr: str) -> list[Selector]:
    """Metric selectors of `expr` (after `substitute`), in order."""
    toks = _tokens(expr)
    found: list[Selector] = []
    # stack of open parentheses: the function name that opened it, "" for grouping/label lists
    stack: list[str] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "op" and text == "(":
            stack.append("")
        elif kind == "op" and text == ")":
            if stack:
                stack.pop()
        elif kind == "op" and text == "{":
            # bare label matchers: {__name__="x"} - skip to the closing brace
            i = _skip_braces(toks, i)
            continue
        elif kind == "ident":
            low = text.lower()
            if nxt == ("op", "("):
                # function call, aggregation or grouping list (by/on/... followed by a label list)
                if low in KEYWORDS:
                    i = _skip_parens(toks, i + 1)
                    continue
                stack.append(low)
                i += 2
                continue
            if low in AGGREGATORS and nxt[0] == "ident" and nxt[1].lower() in ("by", "without"):
                j = _skip_parens(toks, i + 2)  # the label list
                if j < len(toks) and toks[j] == ("op", "("):
                    stack.append(low)
                    i = j + 1
                    continue
            if low in KEYWORDS:
                i += 1
                continue
            # a metric name: optional {...}, optional [range]
            j = i + 1
            if j < len(toks) and toks[j] == ("op", "{"):
                j = _skip_braces(toks, j)
            has_range = j < len(toks) and toks[j][0] == "duration"
            func = stack[-1] if stack else ""
            found.append(
                Selector(text, func if (has_range and func in COUNTER_FUNCS) else None, has_range)
            )
            i = j + (1 if has_range else 0)
            continue
        i += 1
    return found


def _skip_braces(toks: list[tuple[str, str]], i: int) -> int:
    while i < len(toks) and toks[i] != ("op", "}"):
        i += 1
    return i + 1


def _skip_parens(toks: list[tuple[str, str]], i: int) -> int:
    """i points at "("; return the index after the matching ")" (label lists have no nesting)."""
    while i < len(toks) and toks[i] != ("op", ")"):
        i += 1
    return i + 1


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr)}


def is_recorded(name: str) -> bool:
    """Recording-rule outputs are named level:metric:operation."""
    return ":" in name


def counter_misuse(expr: str, counters: set[str]) -> list[str]:
    """Names of counter/histogram series read outside rate()/increase()/irate()."""
    bad = []
    for s in selectors(expr):
        counterish = s.name in counters or (
            not is_recorded(s.name) and s.name.endswith(COUNTER_SUFFIXES)
        )
        if counterish and s.in_range_function is None:
            bad.append(s.name)
    return bad
