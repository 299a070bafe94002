"""`tbg measure` records keep token keys; records written before keys existed are resolved on
load, and the report says where strings collided."""

from __future__ import annotations

import json
from pathlib import Path

from estimator.tokens import DUP_MARK
from measure import analysis
from measure.store import Key, Record, Store

R = "\ufffd"
# Three positions of one run: ' d', then a piece of 'í' that collides with two other pieces
# (all shown as R), then 'a'. Alternatives as the old records stored them: text keys, a list.
TOKENS = [" d", R, "a"]
LOGPROBS = [-0.01, -0.435, -0.05]
TOPS = [
    [[" d", -0.01], [" D", -5.0]],
    [[R, -0.435], [R, -1.9], [R, -6.81]],
    [["a", -0.05], ["as", -3.1]],
]


def _old_line(run: int) -> str:
    return json.dumps(
        {
            "key": {"role": "sut", "prompt": "p", "run": run, "temperature": 0.0, "level": 1},
            "tokens": TOKENS,
            "logprobs": LOGPROBS,
            "top_logprobs": TOPS,
            "text": " día",
            "finish_reason": "length",
            "completion_tokens": 3,
            "latency_s": 0.1,
            "started": 1.0,
            "session": "s",
        },
        ensure_ascii=False,
    )


def test_old_records_are_resolved_on_load_and_the_report_notes_it(tmp_path: Path) -> None:
    params = {"model": "m"}
    Store(tmp_path, params).close()
    (tmp_path / "runs.jsonl").write_text(
        "".join(_old_line(r) + "\n" for r in range(3)), encoding="utf-8"
    )
    st = Store(tmp_path, params)
    recs = st.select("sut")
    st.close()
    assert len(recs) == 3
    for rec in recs:
        assert rec.token_collisions == 1
        assert rec.top_logprobs is not None
        assert rec.top_logprobs[1] == (
            (R, -0.435),
            (f"{R}{DUP_MARK}1", -1.9),
            (f"{R}{DUP_MARK}2", -6.81),
        )
    trials = analysis.trials_from(recs)
    est, _, notes = analysis.estimates(trials, level=0.95, with_logprobs=True)
    # Three identical runs: nothing diverged, so the likelihood estimate is 0 (keyed by text,
    # the chosen piece took another piece's logprob, and only a high T explained it).
    assert est["likelihood"]["estimate"] == 0.0
    assert any("token strings collided at 3 position(s)" in n for n in notes)


def test_new_records_round_trip_their_keys(tmp_path: Path) -> None:
    top = (((" d", -0.01), (" D", -5.0)), ((R, -0.435), (f"{R}{DUP_MARK}1", -1.9)))
    rec = Record(
        Key("sut", "p", 0, 0.0, 1),
        (" d", R),
        (-0.01, -0.435),
        top,
        " d",
        "length",
        2,
        0.1,
        1.0,
        "s",
        1,
    )
    back = Record.from_json(json.loads(rec.to_json()))
    assert back == rec and back.run().token_collisions == 1
