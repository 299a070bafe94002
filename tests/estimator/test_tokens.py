"""Tokens are told apart by what they are, not by their text (estimator.tokens, builders).

The case that matters: a byte-level tokeniser splits a multi-byte character (é, 日, 🙂) into pieces
that are not valid UTF-8 alone; every such piece is shown as '\\ufffd'. Keyed by text, the chosen
piece is given another piece's logprob and the likelihood explains the mismatch with a high T.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from estimator.builders import (
    run_from_chat_response,
    run_from_chat_stream,
    run_from_completion_response,
)
from estimator.compare import compare_trial
from estimator.likelihood import estimate_likelihood
from estimator.model import Run, Trial
from estimator.tokens import (
    BYTES_MARK,
    DUP_MARK,
    as_bytes,
    bytes_key,
    resolve_collisions,
    resolve_run,
)

R = "\ufffd"  # what every byte-fallback piece decodes to


def test_bytes_keys_are_the_text_when_valid_and_one_to_one() -> None:
    assert bytes_key(b" hola") == " hola"
    assert bytes_key("día".encode()) == "día"
    assert bytes_key("\ufffd".encode()) == "\ufffd"  # a real replacement character
    pieces = [b"\xc3", b"\xad", b"\xe6\x97", b"\xa5", b"\xf0\x9f", b"\x99\x82", b"\xf0\x9f\x99"]
    keys = [bytes_key(p) for p in pieces]
    assert all(k.startswith(BYTES_MARK) for k in keys)
    assert len(set(keys)) == len(keys)
    # One to one over every kind of byte string, a text containing the marker included.
    every = [
        *pieces,
        b"a",
        "\ufffe".encode(),
        "x\ufffe".encode(),
        b"\xef\xbf\xbd",
        b"",
        bytes.fromhex("c3ad"),
    ]
    assert len({bytes_key(b) for b in every}) == len(every)
    assert bytes_key("\ufffe".encode()) == BYTES_MARK + "efbfbe"


def test_as_bytes_takes_only_a_list_of_byte_values() -> None:
    assert as_bytes([226, 128]) == b"\xe2\x80"
    assert as_bytes(None) is None and as_bytes([]) is None and as_bytes("ab") is None
    assert as_bytes([256]) is None and as_bytes([-1]) is None and as_bytes([1.5]) is None


def test_no_collision_leaves_the_alternatives_as_they_are() -> None:
    top = ((" a", -0.1), (" b", -2.0))
    assert resolve_collisions(" a", -0.1, top) == (top, False)
    assert resolve_collisions(" c", -5.0, top) == (top, False)  # chosen outside the top-k


def test_duplicate_strings_the_chosen_one_found_by_its_logprob() -> None:
    # Three pieces shown as R; the run chose the one at -0.435 (not the first one listed).
    top = ((R, -0.2), (R, -0.435), (" x", -3.0), (R, -6.81))
    out, hit = resolve_collisions(R, -0.435, top)
    assert hit
    assert dict(out)[R] == -0.435  # the chosen key carries the chosen token's logprob
    assert [lp for _, lp in out] == [-0.2, -0.435, -3.0, -6.81]  # nothing lost, same order
    assert [t for t, _ in out] == [f"{R}{DUP_MARK}1", R, " x", f"{R}{DUP_MARK}2"]
    assert len({t for t, _ in out}) == 4
    assert resolve_collisions(R, -0.435, out) == (out, False)  # idempotent


def test_duplicates_not_chosen_keep_the_most_likely_under_the_string() -> None:
    top = ((" y", -0.1), (R, -1.0), (R, -2.0))
    out, hit = resolve_collisions(" y", -0.1, top)
    assert hit and out == ((" y", -0.1), (R, -1.0), (f"{R}{DUP_MARK}1", -2.0))


def test_merged_entry_of_another_token_leaves_the_choice_unscored() -> None:
    # A legacy completions object keeps one entry per string: here another piece's (-6.81).
    top = ((" el", -1.2), (R, -6.81))
    out, hit = resolve_collisions(R, -0.435, top)
    assert hit
    assert out == ((" el", -1.2), (f"{R}{DUP_MARK}1", -6.81))  # R is no longer an alternative


def test_unknown_chosen_logprob_leaves_the_choice_unscored() -> None:
    top = ((R, -0.2), (R, -6.81), (" x", -3.0))
    out, hit = resolve_collisions(R, None, top)
    assert hit and R not in dict(out)  # the choice falls in the tail: not scored
    assert sorted(lp for _, lp in out) == [-6.81, -3.0, -0.2]
    out, hit = resolve_collisions(R, float("nan"), top)
    assert hit and R not in dict(out)


def test_rounding_slack_is_not_a_collision() -> None:
    top = ((" a", -0.4350001), (" b", -2.0))
    assert resolve_collisions(" a", -0.435, top) == (top, False)


def _entry(
    text: str, raw: bytes | None, lp: float, alts: list[tuple[str, bytes | None, float]]
) -> dict[str, Any]:
    e: dict[str, Any] = {"token": text, "logprob": lp}
    if raw is not None:
        e["bytes"] = list(raw)
    e["top_logprobs"] = []
    for t, b, x in alts:
        a: dict[str, Any] = {"token": t, "logprob": x}
        if b is not None:
            a["bytes"] = list(b)
        e["top_logprobs"].append(a)
    return e


def _chat(content: list[dict[str, Any]], text: str) -> dict[str, Any]:
    return {
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": content},
            }
        ]
    }


# "día": ' d' then the two bytes of 'í' (c3 ad) as two pieces, then 'a'. At the first piece the
# alternatives hold two other pieces that also decode to R.
def _dia(with_bytes: bool, vllm_bytes: bool = False) -> dict[str, Any]:
    def b(raw: bytes) -> bytes | None:
        if not with_bytes:
            return None
        return R.encode() if vllm_bytes and raw.decode("utf-8", "replace") == R else raw

    content = [
        _entry(" d", b(b" d"), -0.01, [(" d", b(b" d"), -0.01), (" D", b(b" D"), -5.0)]),
        _entry(
            R,
            b(b"\xc3"),
            -0.435,
            [(R, b(b"\xc3"), -0.435), (R, b(b"\xe2"), -1.9), (R, b(b"\xf0"), -6.81)],
        ),
        _entry(R, b(b"\xad"), -0.02, [(R, b(b"\xad"), -0.02), (R, b(b"\xa9"), -4.2)]),
        _entry("a", b(b"a"), -0.05, [("a", b(b"a"), -0.05), ("as", b(b"as"), -3.1)]),
    ]
    return _chat(content, " día")


def test_chat_bytes_are_the_identity() -> None:
    run = run_from_chat_response(_dia(with_bytes=True))
    assert run.tokens == (" d", BYTES_MARK + "c3", BYTES_MARK + "ad", "a")
    assert run.top_logprobs is not None
    for s, tok in enumerate(run.tokens):  # the chosen token's entry is its own logprob
        assert run.logprobs is not None
        assert dict(run.top_logprobs[s])[tok] == run.logprobs[s]
        assert len(dict(run.top_logprobs[s])) == len(run.top_logprobs[s])
    assert run.token_collisions == 0  # bytes told them apart: nothing collided
    assert run.text == " día"


@pytest.mark.parametrize("vllm_bytes", [False, True])
def test_chat_without_informative_bytes_resolves_by_logprob(vllm_bytes: bool) -> None:
    # No bytes, or vLLM's bytes (those of the replacement text: every piece gets ef bf bd).
    run = run_from_chat_response(_dia(with_bytes=vllm_bytes, vllm_bytes=vllm_bytes))
    assert run.top_logprobs is not None and run.logprobs is not None
    for s, tok in enumerate(run.tokens):
        assert dict(run.top_logprobs[s])[tok] == run.logprobs[s]
        assert len(dict(run.top_logprobs[s])) == len(run.top_logprobs[s])
    assert run.token_collisions == 2


def test_mixed_bytes_fall_back_to_strings_for_that_position() -> None:
    # bytes on the chosen token only: keyed by text, so it is still found among its alternatives
    e = _entry(" d", b" d", -0.01, [(" d", None, -0.01), (" D", None, -5.0)])
    run = run_from_chat_response(_chat([e], " d"))
    assert run.tokens == (" d",) and run.top_logprobs == (((" d", -0.01), (" D", -5.0)),)


def test_stream_chunks_resolve_the_same_way() -> None:
    body = _dia(with_bytes=True)
    content = body["choices"][0]["logprobs"]["content"]
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"content": ""}, "logprobs": {"content": [c]}}]}
        for c in content
    ]
    chunks[-1]["choices"][0]["delta"]["content"] = " día"
    assert run_from_chat_stream(chunks).top_logprobs == run_from_chat_response(body).top_logprobs


def test_completions_object_merged_by_string() -> None:
    # JSON objects keep one value per key: the upstream's R entry is another piece's logprob.
    body = {
        "choices": [
            {
                "index": 0,
                "text": " día",
                "finish_reason": "length",
                "logprobs": {
                    "tokens": [" d", R, R, "a"],
                    "token_logprobs": [-0.01, -0.435, -0.02, -0.05],
                    "top_logprobs": [
                        {" d": -0.01, " D": -5.0},
                        {R: -6.81, " el": -1.2},
                        {R: -0.02, "s": -4.0},
                        {"a": -0.05, "as": -3.1},
                    ],
                    "text_offset": [0, 2, 2, 3],
                },
            }
        ]
    }
    run = run_from_completion_response(body)
    assert run.top_logprobs is not None
    assert run.top_logprobs[1] == ((" el", -1.2), (f"{R}{DUP_MARK}1", -6.81))  # unscored
    assert run.top_logprobs[2] == ((R, -0.02), ("s", -4.0))
    assert run.token_collisions == 1
    # Two such runs: nothing diverged and the unscored choice adds no evidence for a high T.
    c = compare_trial(Trial("fp", (run, run)))
    assert c.nodes is not None and c.nodes.linear == 0.0 and c.nodes.tail_choices == 2


def _trial(run: Run, n: int = 2) -> Trial:
    return Trial("fp", (run,) * n)


def _by_text(body: dict[str, Any]) -> Run:
    """The run as text keys gave it before: alternatives keyed by their string (last one wins),
    chosen tokens by their text. What the comparison must never see."""
    content = body["choices"][0]["logprobs"]["content"]
    tops = tuple(
        tuple(sorted(((t["token"], t["logprob"]) for t in c["top_logprobs"]), key=lambda p: -p[1]))
        for c in content
    )
    return Run(
        tuple(c["token"] for c in content),
        tuple(c["logprob"] for c in content),
        tops,
        body["choices"][0]["message"]["content"],
        "length",
    )


def test_identical_runs_with_colliding_pieces_do_not_raise_t() -> None:
    """Replays that reproduce the primary exactly: nothing diverged, so T̂ = 0, whatever
    strings the pieces share. Keyed by text, the chosen piece got another's logprob (−6.81
    instead of −0.435 in a real case) and only a high T explained it."""
    bodies = [_dia(with_bytes=True), _dia(with_bytes=False), _dia(True, vllm_bytes=True)]
    for body in bodies:
        run = run_from_chat_response(body)
        for n in (2, 3):  # the two-run fast path and the general trie walk
            c = compare_trial(_trial(run, n))
            assert c.nodes is not None and c.nodes.linear == 0.0
            assert c.token_collisions == n * run.token_collisions
        res = estimate_likelihood([_trial(run, 2), _trial(run, 3)])
        assert res.estimate == 0.0
    # The same runs keyed by text: the defect this guards against (so the test can fail).
    old = _by_text(_dia(with_bytes=False))
    c = compare_trial(_trial(old))
    assert c.nodes is not None and c.nodes.linear > 6.0
    assert estimate_likelihood([_trial(old)]).estimate > 0.5
    # `resolve_run` repairs such a run (stored records written before keys existed).
    fixed = resolve_run(old)
    assert fixed.token_collisions >= 1
    assert estimate_likelihood([_trial(fixed)]).estimate == 0.0


def test_runs_choosing_different_pieces_diverge_with_bytes() -> None:
    """With bytes, two runs that chose different pieces (both shown as R) branch in the trie."""
    a = _dia(with_bytes=True)
    b = _dia(with_bytes=True)
    piece = b["choices"][0]["logprobs"]["content"][1]
    piece["bytes"], piece["logprob"] = [0xE2], -1.9
    ra, rb = run_from_chat_response(a), run_from_chat_response(b)
    assert ra.tokens[1] != rb.tokens[1]
    c = compare_trial(Trial("fp", (ra, rb)))
    assert c.diverged == 1 and c.first_divergences == (1,)
    assert {c.exemplars[0].token_a, c.exemplars[0].token_b} == {
        BYTES_MARK + "c3",
        BYTES_MARK + "e2",
    }


def test_keys_stay_distinct_for_any_collision_pattern() -> None:
    """Every pattern of up to four entries over two strings and a few logprobs: the result has
    distinct keys, keeps every logprob, and the chosen key (when kept) has the chosen logprob."""
    strings, lps = (R, "x"), (-0.1, -0.5, -2.0)
    for k in range(1, 5):
        for names in itertools.product(strings, repeat=k):
            for vals in itertools.product(lps, repeat=k):
                top = tuple(sorted(zip(names, vals, strict=True), key=lambda p: -p[1]))
                for chosen_lp in (*lps, None):
                    out, _ = resolve_collisions(R, chosen_lp, top)
                    keys = [t for t, _ in out]
                    assert len(set(keys)) == len(keys)
                    assert [v for v in vals if v not in [x for _, x in out]] == []
                    if R in dict(out) and chosen_lp is not None:
                        assert dict(out)[R] == chosen_lp
                    assert len(out) == len(top)  # nothing added or dropped
                    assert [x for _, x in out] == sorted((x for _, x in out), reverse=True)
