"""Token bytes on the wire, and tokens told apart by them, for text in several scripts.

SmolLM2's byte-level tokeniser splits accented letters, CJK and emoji into pieces that are not
valid UTF-8 alone; their text is '\\ufffd' for all of them. The reference reports each token's
real bytes (as OpenAI does), and the run builders key tokens by them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from estimator.builders import run_from_chat_response, run_from_completion_response
from estimator.model import Run
from estimator.tokens import BYTES_MARK
from measure.prompts import Prompt, load_prompts
from reference.launch import ReferenceProcess

pytestmark = pytest.mark.reference

IDS = ("cafe-es", "accents-fr", "great-wall-zh", "seasons-ja", "emoji", "unicode-code")
K = 5


@pytest.fixture(scope="module")
def api(serial_server: ReferenceProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=serial_server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def _chat(api: openai.OpenAI, prompt: Prompt, **extra: Any) -> dict[str, Any]:
    """One greedy 16-token chat with K alternatives per position, as a plain dict."""
    resp = api.chat.completions.create(
        model="smollm2",
        messages=prompt.as_messages(),  # type: ignore[arg-type]
        max_tokens=16,
        temperature=0,
        logprobs=True,
        top_logprobs=K,
        **extra,
    )
    return resp.model_dump()


@pytest.fixture(scope="module")
def chats(api: openai.OpenAI) -> list[dict[str, Any]]:
    prompts = {p.id: p for p in load_prompts(None).prompts}
    return [_chat(api, prompts[pid]) for pid in IDS]


def _keys_are_identities(run: Run) -> int:
    """Checks one run's keys; returns the positions whose choice was left unscored."""
    assert run.top_logprobs is not None and run.logprobs is not None
    unscored = 0
    for s, tok in enumerate(run.tokens):
        top = dict(run.top_logprobs[s])
        assert len(top) == len(run.top_logprobs[s])  # alternatives have distinct keys
        if tok in top:
            assert top[tok] == run.logprobs[s]  # the chosen token carries its own logprob
        else:
            unscored += 1  # greedy: the chosen token is in the top-k, so it was told apart
    assert unscored <= run.token_collisions
    return unscored


def test_chat_bytes_are_each_tokens_own(chats: list[dict[str, Any]]) -> None:
    for body in chats:
        choice = body["choices"][0]
        content = choice["logprobs"]["content"]
        for item in content:
            assert bytes(item["bytes"]).decode("utf-8", "replace") == item["token"]
            for alt in item["top_logprobs"]:
                assert bytes(alt["bytes"]).decode("utf-8", "replace") == alt["token"]
            # distinct tokens, distinct bytes (the alternatives are k different ids)
            assert len({bytes(a["bytes"]) for a in item["top_logprobs"]}) == K
        raw = b"".join(bytes(i["bytes"]) for i in content if not i["token"].startswith("<|"))
        assert raw.decode("utf-8", "replace") == choice["message"]["content"]


def test_chat_runs_are_keyed_by_bytes(chats: list[dict[str, Any]]) -> None:
    pieces = collided = 0
    for body in chats:
        run = run_from_chat_response(body)
        assert _keys_are_identities(run) == 0
        assert run.token_collisions == 0  # bytes tell every token apart
        pieces += sum(t.startswith(BYTES_MARK) for t in run.tokens)
        for item in body["choices"][0]["logprobs"]["content"]:
            texts = [a["token"] for a in item["top_logprobs"]]
            collided += len(set(texts)) < len(texts)
    # The hard case is exercised: chosen tokens that are pieces of a character, and positions
    # where alternatives share their text (keyed by text, one would take another's logprob).
    assert pieces > 0 and collided > 0


def test_completions_runs_resolve_merged_strings(api: openai.OpenAI) -> None:
    """Legacy completions key alternatives by text in an object (as vLLM does): strings that
    collide are merged there, and the builder never gives the chosen token another's logprob
    (where the kept entry is another token's, the choice is left unscored)."""
    prompts = {p.id: p for p in load_prompts(None).prompts}
    merged = 0
    for pid in IDS:
        text = prompts[pid].messages[-1][1]
        resp = api.completions.create(
            model="smollm2", prompt=text, max_tokens=12, temperature=0, logprobs=K
        )
        run = run_from_completion_response(resp.model_dump())
        _keys_are_identities(run)
        merged += run.token_collisions
    assert merged > 0  # CJK and emoji answers do merge pieces (6-7 positions each here)


def test_token_ids_name_every_token(api: openai.OpenAI, chats: list[dict[str, Any]]) -> None:
    """vLLM's ``return_tokens_as_token_ids``: tokens named by id never collide, and the greedy
    answer is the same one, token for token."""
    prompts = {p.id: p for p in load_prompts(None).prompts}
    for pid, by_bytes in zip(IDS, chats, strict=True):
        body = _chat(api, prompts[pid], extra_body={"return_tokens_as_token_ids": True})
        assert (
            body["choices"][0]["message"]["content"] == by_bytes["choices"][0]["message"]["content"]
        )
        run = run_from_chat_response(body)
        assert _keys_are_identities(run) == 0
        assert run.token_collisions == 0
        assert all(t.startswith("token_id:") for t in run.tokens)
        assert len(run.tokens) == len(run_from_chat_response(by_bytes).tokens)
        text = prompts[pid].messages[-1][1]
        comp = api.completions.create(
            model="smollm2",
            prompt=text,
            max_tokens=12,
            temperature=0,
            logprobs=K,
            extra_body={"return_tokens_as_token_ids": True},
        )
        crun = run_from_completion_response(comp.model_dump())
        assert _keys_are_identities(crun) == 0
        assert crun.token_collisions == 0  # ids: nothing merged in the object
        assert all(len(t) == K for t in crun.top_logprobs or ())


def test_token_ids_flag_must_be_a_boolean(serial_server: ReferenceProcess) -> None:
    import httpx

    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "return_tokens_as_token_ids": "yes",
    }
    r = httpx.post(f"{serial_server.base_url}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "return_tokens_as_token_ids"
