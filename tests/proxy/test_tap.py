"""The shadow seam: plan/complete once per request, upstream_body, rewrites, teed events."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import openai
import orjson
import pytest

from proxy.app import REGISTRY
from proxy.tap import Exchange, RequestInfo, TapPlan

from .fakes import CHAT_BODY, CHAT_EVENTS, FakeUpstream, proxy_stack
from .test_forwarding import MESSAGES, single

STREAM_PAYLOADS = [orjson.loads(e.removeprefix(b"data: ")) for e in CHAT_EVENTS[:-1]]


@dataclass
class RecordingTap:
    make_plan: Callable[[RequestInfo], TapPlan | None] = lambda info: TapPlan()
    fail: str = ""  # "plan" or "complete": raise there
    planned: list[RequestInfo] = field(default_factory=list)
    completed: list[Exchange] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def plan(self, request: RequestInfo) -> TapPlan | None:
        self.planned.append(request)
        if self.fail == "plan":
            raise RuntimeError("plan exploded")
        return self.make_plan(request)

    def complete(self, exchange: Exchange) -> None:
        self.completed.append(exchange)
        self.done.set()
        if self.fail == "complete":
            raise RuntimeError("complete exploded")


async def test_non_streaming_upstream_body_and_rewrite_body() -> None:
    new_body = b'{"model": "m", "messages": [], "logprobs": true}'
    tap = RecordingTap(
        lambda info: TapPlan(
            upstream_body=new_body,
            rewrite_body=lambda b: b.replace(b"H\xc3\xa9llo", b"rewritten!"),
            token="t1",
        )
    )
    async with proxy_stack(single(), tap=tap) as stack, httpx.AsyncClient() as http:
        raw = orjson.dumps({"model": "m", "messages": MESSAGES})
        r = await http.post(stack.proxy_url + "/v1/chat/completions", content=raw)
        assert r.status_code == 200
        assert r.content == CHAT_BODY.replace(b"H\xc3\xa9llo", b"rewritten!")
        assert int(r.headers["content-length"]) == len(r.content)
        assert stack.fakes[0].requests[0].body == new_body
        assert stack.fakes[0].requests[0].headers["Content-Length"] == str(len(new_body))
    (info,) = tap.planned
    assert (info.route, info.upstream, info.model_name, info.stream) == ("chat", "up", "m", False)
    assert info.raw_body == raw and info.body["messages"] == MESSAGES
    (ex,) = tap.completed
    assert (ex.status, ex.response_body, ex.events, ex.completed) == (200, CHAT_BODY, (), True)
    assert ex.plan.token == "t1" and ex.started_at <= ex.finished_at


async def test_streaming_rewrite_event_and_teed_events() -> None:
    tap = RecordingTap(lambda info: TapPlan(rewrite_event=lambda e: e.replace(b"llo", b"LLO")))
    async with proxy_stack(single(), tap=tap) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk")
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
    assert text == "HéLLO ☃"
    (ex,) = tap.completed
    assert list(ex.events) == STREAM_PAYLOADS  # as the upstream sent them, before the rewrite
    assert ex.completed and ex.status == 200 and ex.response_body is None
    assert tap.planned[0].stream


async def test_events_survive_splits_inside_a_character_and_a_boundary() -> None:
    data = b"".join(CHAT_EVENTS)
    e_acute = data.index("é".encode()) + 1  # between the two bytes of "é"
    boundary = data.index(b"\n\n", data.index(b"llo")) + 1  # between the two newlines
    snowman = data.index("☃".encode()) + 2
    cuts = sorted([0, e_acute, snowman, boundary, len(data)])
    pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
    fake = FakeUpstream(pieces=pieces, piece_delay=0.05)  # separate TCP reads on the proxy
    tap = RecordingTap()
    async with proxy_stack(single(), [fake], tap=tap) as stack, httpx.AsyncClient() as http:
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        r = await http.post(stack.proxy_url + "/v1/chat/completions", json=body)
        assert r.content == data  # relayed untouched
    (ex,) = tap.completed
    assert list(ex.events) == STREAM_PAYLOADS


async def test_complete_once_on_upstream_errors() -> None:
    tap = RecordingTap()
    make = single(upstream={"timeouts": {"first_byte": 0.3}})
    async with proxy_stack(make, tap=tap) as stack, httpx.AsyncClient() as http:
        for fault in ("reset", "sleep", "teapot"):
            body = {"model": "m", "prompt": "p"}
            await http.post(
                stack.proxy_url + "/v1/completions", json=body, headers={"x-fault": fault}
            )
    assert [(e.status, e.completed) for e in tap.completed] == [(0, False), (0, False), (418, True)]
    assert len(tap.planned) == 3
    assert tap.completed[2].response_body == b'{"error": {"message": "short and stout"}}'


async def test_complete_once_on_client_disconnect() -> None:
    fake = FakeUpstream(gate=asyncio.Event())
    tap = RecordingTap()
    async with proxy_stack(single(), [fake], tap=tap) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk")
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async for _ in stream:
            break
        await stream.close()
        await client.close()
        async with asyncio.timeout(5):
            await tap.done.wait()
    (ex,) = tap.completed
    assert not ex.completed
    assert list(ex.events) == STREAM_PAYLOADS[:1]


@pytest.mark.parametrize("fail", ["plan", "complete", "rewrite"])
async def test_a_raising_tap_never_breaks_the_primary(fail: str) -> None:
    def boom(data: bytes) -> bytes:
        raise ValueError("rewrite exploded")

    tap = RecordingTap(lambda info: TapPlan(rewrite_body=boom), fail=fail)
    async with proxy_stack(single(), tap=tap) as stack, httpx.AsyncClient() as http:
        r = await http.post(
            stack.proxy_url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}
        )
        assert (r.status_code, r.content) == (200, CHAT_BODY)
        stage = "rewrite_body" if fail == "rewrite" else fail
        assert stack.app[REGISTRY].get_sample_value("tbg_tap_errors_total", {"stage": stage}) == 1
    assert len(tap.completed) == (0 if fail == "plan" else 1)


async def test_no_plan_means_no_complete_and_other_routes_are_not_tapped() -> None:
    tap = RecordingTap(lambda info: None)
    async with proxy_stack(single(), tap=tap) as stack, httpx.AsyncClient() as http:
        await http.post(stack.proxy_url + "/v1/embeddings", json={"model": "m", "input": "x"})
        assert tap.planned == []
        await http.post(
            stack.proxy_url + "/v1/chat/completions", json={"model": "zzz", "messages": MESSAGES}
        )
    assert [i.model_name for i in tap.planned] == ["other"]
    assert tap.completed == []


async def _stream_then_close(url: str, stop_after: bytes) -> list[bytes]:
    """Read an event stream line by line and close the connection once `stop_after` arrives,
    as SDKs do once they read `[DONE]` (before the upstream's chunked terminator)."""
    lines: list[bytes] = []
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    async with httpx.AsyncClient() as http, http.stream("POST", url, json=body) as r:
        async for line in r.aiter_lines():
            lines.append(line.encode())
            if line.startswith(stop_after.decode()):
                break
    return lines


@pytest.mark.parametrize("stop_after", [b"data: [DONE]", b"data: {"])
async def test_a_client_that_closes_after_done_got_the_whole_stream(stop_after: bytes) -> None:
    """A client that closes right after `[DONE]` received everything: the exchange is complete
    (the shadow path may replay it) and the request counts as 200, not as a 499 cancellation.
    One that closes before `[DONE]` is still a cancelled, incomplete primary."""
    # The upstream waits before ending the chunked body, so the client's close comes first.
    fake = FakeUpstream(pieces=[b"".join(CHAT_EVENTS[:-1]), CHAT_EVENTS[-1]], piece_delay=0.5)
    tap = RecordingTap()
    async with proxy_stack(single(), [fake], tap=tap) as stack:
        await _stream_then_close(stack.proxy_url + "/v1/chat/completions", stop_after)
        await asyncio.wait_for(tap.done.wait(), 5)
        registry = stack.app[REGISTRY]
        labels = {"route": "chat", "model_name": "m", "upstream": "up"}
        await asyncio.sleep(0.05)  # metrics are observed in a loop callback after the handler
        statuses = {
            s: registry.get_sample_value("tbg_requests_total", {**labels, "status": s})
            for s in ("200", "499")
        }
    (ex,) = tap.completed
    if stop_after == b"data: [DONE]":
        assert ex.completed and ex.status == 200
        assert list(ex.events) == STREAM_PAYLOADS
        assert statuses == {"200": 1.0, "499": None}
    else:
        assert not ex.completed
        assert statuses == {"200": None, "499": 1.0}


RESPONSES_EVENTS = [
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n',
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"sequence_number":1,"delta":"Hi"}\n\n',
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":2}\n\n',
]


@pytest.mark.parametrize("stop_after", [b"event: response.completed", b"event: response.output"])
async def test_a_responses_client_that_closes_after_the_final_event_got_the_whole_stream(
    stop_after: bytes,
) -> None:
    """A Responses stream has no `[DONE]`: its `response.completed` event ends it. A client that
    closes right after that event received everything (complete, 200); one that closes before is
    a cancelled, incomplete primary (499)."""
    # The upstream waits before ending the chunked body, so the client's close comes first.
    fake = FakeUpstream(pieces=[b"".join(RESPONSES_EVENTS[:2]), RESPONSES_EVENTS[2]],
                        piece_delay=0.5)  # fmt: skip
    if stop_after == b"event: response.completed":
        fake = FakeUpstream(pieces=[b"".join(RESPONSES_EVENTS), b"\n"], piece_delay=0.5)
    tap = RecordingTap()
    async with proxy_stack(single(), [fake], tap=tap) as stack:
        lines: list[bytes] = []
        body = {"model": "m", "input": "x", "stream": True}
        async with (
            httpx.AsyncClient() as http,
            http.stream("POST", stack.proxy_url + "/v1/responses", json=body) as r,
        ):
            async for line in r.aiter_lines():
                lines.append(line.encode())
                if (
                    line.startswith("data: ")
                    and len(lines) > 1
                    and lines[-2].startswith(stop_after)
                ):
                    break
        await asyncio.wait_for(tap.done.wait(), 5)
        registry = stack.app[REGISTRY]
        labels = {"route": "responses", "model_name": "m", "upstream": "up"}
        await asyncio.sleep(0.05)  # metrics are observed in a loop callback after the handler
        statuses = {
            s: registry.get_sample_value("tbg_requests_total", {**labels, "status": s})
            for s in ("200", "499")
        }
    (ex,) = tap.completed
    if stop_after == b"event: response.completed":
        assert ex.completed and ex.status == 200
        assert [e["type"] for e in ex.events][-1] == "response.completed"
        assert statuses == {"200": 1.0, "499": None}
    else:
        assert not ex.completed
        assert statuses == {"200": None, "499": 1.0}
