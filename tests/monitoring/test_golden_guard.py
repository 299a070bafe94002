"""The golden-file comparisons hold on any CPU and still catch real changes.

Rounding noise is simulated twice: in the generator's inputs (every float of the likelihood curves
moved by a few ULP before the promtool tests are generated, as another CPU's numpy reductions
would) and in the committed files themselves (every float written there moved by a few ULP). Both
must compare equal as data. A real change (a threshold, a comparison, a case, a title) must not.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import pytest

from grafana import dashboards, queries
from tests.golden import NUMBER, differences, kind_of
from tests.monitoring import pooled_cases
from tests.monitoring.common import PROM_DIR, RULES_DIR, rules_gen

ULPS = 4


def _ulps(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y = np.array(x, dtype=np.float64, copy=True)
    # An exact zero is structural (nothing was added there), not a rounded sum: it stays.
    steps = np.where(y == 0, 0, rng.integers(-ULPS, ULPS + 1, size=y.shape))
    for i in range(ULPS):
        up, down = steps > i, steps < -i
        y[up] = np.nextafter(y[up], np.inf)
        y[down] = np.nextafter(y[down], -np.inf)
    return y


def _jiggle(value: Any, rng: np.random.Generator) -> Any:
    """Every non-integral float in `value` (arrays, dataclass fields, tuples) moved by ≤ 4 ULP;
    integral ones are counts and stay as they are."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return _ulps(value, rng)
    if isinstance(value, float) and not value.is_integer():
        return float(_ulps(np.array([value]), rng)[0])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _jiggle(getattr(value, f.name), rng) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple):
        return tuple(_jiggle(v, rng) for v in value)
    return value


def _jiggle_text(text: str, rng: np.random.Generator) -> str:
    """Every float written in `text` moved by ≤ 4 ULP (integers untouched)."""

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        if re.fullmatch(r"[-+]?\d+", token):
            return token
        sign = "+" if token.startswith("+") else ""
        return sign + repr(float(_ulps(np.array([float(token)]), rng)[0]))

    return NUMBER.sub(one, text)


def _golden_files() -> dict[str, str]:
    paths = [*(PROM_DIR / "tests").glob("*.test.yml"), *RULES_DIR.glob("*.yml")]
    paths += queries.dashboard_files()
    return {p.name: p.read_text(encoding="utf-8") for p in paths}


def test_ulp_noise_in_the_generators_inputs_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(7)
    original = pooled_cases.curve
    monkeypatch.setattr(pooled_cases, "curve", lambda *a, **k: _jiggle(original(*a, **k), rng))
    moved = 0
    for path, text in pooled_cases.outputs().items():
        committed = path.read_text(encoding="utf-8")
        moved += committed != text
        assert differences(committed, text, kind_of(path.name)) == [], path.name
    assert moved, "the perturbation never reached the generated text: the guard proves nothing"


@pytest.mark.parametrize("name", sorted(_golden_files()))
def test_ulp_noise_in_every_committed_float_is_accepted(name: str) -> None:
    text = _golden_files()[name]
    noisy = _jiggle_text(text, np.random.default_rng(11))
    assert noisy != text
    assert differences(text, noisy, kind_of(name)) == []


def test_a_real_change_of_a_rule_is_caught() -> None:
    alerts = (RULES_DIR / "tbg-alerts.rules.yml").read_text(encoding="utf-8")
    flipped = alerts.replace("lower:mle1h > on (model_name)", "lower:mle1h < on (model_name)")
    assert flipped != alerts
    assert differences(alerts, flipped, "yaml")
    recording = rules_gen().outputs()["tbg-recording.rules.yml"]
    m = next(m for m in NUMBER.finditer(recording) if "." in m.group(0))
    nudged = f"{float(m.group(0)) * (1 + 1e-6)!r}"
    changed = recording[: m.start()] + nudged + recording[m.end() :]
    assert differences(recording, changed, "yaml"), (m.group(0), nudged)


def test_a_real_change_of_a_case_or_a_dashboard_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    first = pooled_cases.CASES[0]
    moved = dataclasses.replace(first, temperature=first.temperature * 1.01)
    monkeypatch.setattr(pooled_cases, "CASES", (moved, *pooled_cases.CASES[1:]))
    pooled, _ = pooled_cases.pooled_test()
    generated = pooled_cases.document([pooled], "1m")
    committed = (PROM_DIR / "tests" / "tbg-pooled.test.yml").read_text(encoding="utf-8")
    assert differences(committed, generated, "yaml")
    name, text = next(iter(dashboards.outputs().items()))
    retitled = text.replace('"title": "', '"title": "Old ', 1)
    assert differences(text, retitled, kind_of(name))
