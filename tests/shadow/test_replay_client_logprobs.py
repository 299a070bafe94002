"""A replay of a primary whose client asked for logprobs asks for exactly the same ones, so that
runs with the client's top-k are never compared with runs of the proxy's top-k."""

import orjson

from proxy.shadow.wire import replay_body


def test_a_client_top_k_is_kept_in_the_replay() -> None:
    chat = {"model": "m", "messages": [], "logprobs": True, "top_logprobs": 2, "temperature": 0}
    body = orjson.loads(replay_body("chat", chat, max_tokens=8, logprobs_k=5))
    assert (body["logprobs"], body["top_logprobs"], body["max_tokens"]) == (True, 2, 8)
    completion = {"model": "m", "prompt": "x", "logprobs": 1, "temperature": 0}
    body = orjson.loads(replay_body("completions", completion, max_tokens=8, logprobs_k=5))
    assert body["logprobs"] == 1
    responses = {"model": "m", "input": "x", "temperature": 0, "top_logprobs": 3,
                 "include": ["message.output_text.logprobs"]}  # fmt: skip
    body = orjson.loads(replay_body("responses", responses, max_tokens=8, logprobs_k=5))
    assert body["top_logprobs"] == 3 and body["include"] == ["message.output_text.logprobs"]


def test_without_client_logprobs_the_replay_asks_the_proxys_top_k() -> None:
    chat = {"model": "m", "messages": [], "temperature": 0}
    body = orjson.loads(replay_body("chat", chat, max_tokens=8, logprobs_k=5))
    assert (body["logprobs"], body["top_logprobs"]) == (True, 5)
    responses = {"model": "m", "input": "x", "temperature": 0}
    body = orjson.loads(replay_body("responses", responses, max_tokens=8, logprobs_k=5))
    assert body["top_logprobs"] == 5 and "message.output_text.logprobs" in body["include"]
