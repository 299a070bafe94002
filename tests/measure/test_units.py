"""Pieces of `tbg measure`/`tbg sweep` that need no server: prompt sets, the run store, job
order, the recommendation, and the plots-optional path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from measure import measure_cmd
from measure.analysis import Survival
from measure.execute import spread
from measure.prompts import PromptError, load_prompts, parse_prompts
from measure.store import Key, Record, Store, StoreError
from measure.sweep import LevelRow, recommend


def test_builtin_prompt_set() -> None:
    ps = load_prompts(None)
    assert len(ps.prompts) == 38 and len({p.id for p in ps.prompts}) == 38
    assert ps.head(4).prompts == ps.prompts[:4] and ps.head(4).digest != ps.digest


def test_builtin_prompts_cover_several_scripts() -> None:
    """Accented Latin, CJK, emoji and code: answers in them bring byte-level pieces whose text
    collides (estimator.tokens), which the estimates must survive."""
    text = [" ".join(c for _, c in p.messages) for p in load_prompts(None).prompts]

    def has(lo: int, hi: int) -> bool:
        return any(lo <= ord(ch) <= hi for t in text for ch in t)

    assert has(0xC0, 0x17F)  # accented Latin (é, ü, ñ, ...)
    assert has(0x4E00, 0x9FFF)  # CJK ideographs
    assert has(0x3040, 0x30FF)  # kana
    assert has(0x1F300, 0x1FAFF)  # emoji
    assert sum("Python" in t or "SQL" in t for t in text) >= 2  # code


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}', "duplicate prompt ids: a"),
        ('{"id": "a"}', "needs 'messages'"),
        ("not json", ":1: not JSON"),
        ('{"id": "a", "messages": [{"role": "user"}]}', "string 'role' and 'content'"),
        ("", "no prompts"),
    ],
)
def test_bad_prompt_files(text: str, error: str) -> None:
    with pytest.raises(PromptError, match=error):
        parse_prompts(text, "f.jsonl")


def test_prompt_file_missing(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="cannot read"):
        load_prompts(tmp_path / "nope.jsonl")


def test_spread_is_run_major_and_reorders_prompts() -> None:
    ids = [str(i) for i in range(10)]
    jobs = spread(ids, 3)
    assert len(jobs) == 30 == len(set(jobs))
    assert [r for _, r in jobs] == sorted(r for _, r in jobs)
    orders = [[p for p, r in jobs if r == k] for k in range(3)]
    assert orders[0] == ids and orders[1] != ids and sorted(orders[1]) == ids
    assert spread(ids, 3) == jobs  # fixed seeds


def _record(key: Key) -> Record:
    return Record(key, ("a", "b"), (-0.1, -0.2), None, "ab", "length", 2, 0.5, 1.0, "s")


def test_store_resumes_and_drops_a_cut_line(tmp_path: Path) -> None:
    params = {"model": "m", "max_tokens": 8}
    st = Store(tmp_path, params)
    keys = [Key("sut", "p", r, 0.0, 1) for r in range(3)]
    for k in keys[:2]:
        st.append(_record(k))
    st.close()
    with (tmp_path / "runs.jsonl").open("a") as fh:
        fh.write('{"key": {"role": "sut", "prompt": "p", "run": 2')  # killed mid-write
    st2 = Store(tmp_path, params)
    assert st2.skipped_lines == 1 and set(st2.records) == set(keys[:2])
    assert st2.records[keys[0]].run().tokens == ("a", "b")
    st2.close()
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert [json.loads(x)["key"]["run"] for x in lines] == [0, 1]
    with pytest.raises(StoreError, match=r"max_tokens: 8 \(in DIR\) != 16 \(now\)"):
        Store(tmp_path, {"model": "m", "max_tokens": 16})
    Store(tmp_path, {**params, "reference_url": "u"}).close()  # adding a parameter is fine
    assert json.loads((tmp_path / "params.json").read_text())["reference_url"] == "u"


def _row(load: int, upper: float | None, tps: float, vs_upper: float | None = None) -> LevelRow:
    return LevelRow(
        load=load, runs=4, planned=4, t_bg=0.0, t_lower=0.0, t_upper=upper, t_vs_lowest=None,
        t_vs_lowest_lower=None, t_vs_lowest_upper=vs_upper, t_jitter=None, sigma_gap=None, pairs=2,
        diverged_pairs=0, divergence_rate=0.0, exact_match_rate=1.0, differs_from_level1=None,
        tokens=10, throughput_tps=tps, latency_p50_s=1.0, latency_p95_s=2.0,
    )  # fmt: skip


def test_recommendation_is_the_highest_load_under_the_ceiling() -> None:
    rows = [_row(1, 0.001, 10.0), _row(2, 0.004, 18.0), _row(4, 0.003, 30.0), _row(8, 0.001, 25.0)]
    rec = recommend(rows, 0.005)
    assert rec.load == 8 and rec.best_load == 4 and rec.throughput_cost == pytest.approx(1 / 6)
    assert "as at every lower level" in rec.reason
    assert recommend(rows, 0.0001).load is None
    # A load only counts as safe when the comparison with the lowest load stays under too.
    changed = [*rows[:3], _row(8, 0.001, 25.0, vs_upper=0.03)]
    assert recommend(changed, 0.005).load == 4
    none = recommend([_row(1, None, 5.0)], 0.01)
    assert none.load is None and "no T_bg interval" in none.reason


def test_recommendation_stops_at_the_first_level_over_the_ceiling() -> None:
    # Load 8 passes again, but load 4 does not: the safe range ends at 2 (a service reaching
    # load 8 passes through load 4). Rows in any order.
    rows = [_row(8, 0.001, 25.0), _row(1, 0.001, 10.0), _row(4, 0.02, 30.0), _row(2, 0.004, 18.0)]
    rec = recommend(rows, 0.005)
    assert rec.load == 2 and rec.best_load == 4
    assert rec.throughput_cost == pytest.approx(1 - 18 / 30)
    assert "load 4 upper bound 0.02" in rec.reason
    # The lowest level failing rules every level out, however well the higher ones look.
    low_fails = [_row(1, 0.02, 10.0), _row(2, 0.001, 18.0), _row(4, 0.001, 30.0)]
    rec = recommend(low_fails, 0.005)
    assert rec.load is None and "the lowest level, load 1, is not under 0.005" in rec.reason
    # A level with no interval (no runs there) is not shown safe: the range ends below it.
    gap = [_row(1, 0.001, 10.0), _row(2, None, 18.0), _row(4, 0.001, 30.0)]
    rec = recommend(gap, 0.005)
    assert rec.load == 1 and "load 2 has no interval" in rec.reason
    # The upper bound vs the lowest level counts at every level on the way up as well.
    vs = [_row(1, 0.001, 10.0), _row(2, 0.001, 18.0, vs_upper=0.01), _row(4, 0.001, 30.0)]
    assert recommend(vs, 0.005).load == 1


def test_without_matplotlib_reports_are_written_and_one_line_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    notes: list[str] = []
    s = Survival([3.0], [0.5], [0.2], [0.8], 4, 2, 8.0, 0.95)
    assert measure_cmd.write_plots(tmp_path, s, None, notes) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["plots skipped: matplotlib is not installed (pip install 'tbg-proxy[plots]')"]
    assert notes == err and not list(tmp_path.iterdir())
