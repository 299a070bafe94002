"""Property-based fuzzing (hypothesis, bounded): the SSE tee is chunking-invariant and lossless,
its parser never raises; the handlers answer any body without an internal error."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import REGISTRY
from proxy.sse import SSEParser, SSESplitter, event_json
from tests.proxy.fakes import CHAT_EVENTS, threaded_stack
from tests.proxy.test_forwarding import single

PIECES = st.one_of(
    st.sampled_from(CHAT_EVENTS),
    st.sampled_from(
        [
            b"\n",
            b"\r\n",
            b"\r",
            b"\n\n",
            b"\r\n\r\n",
            b"data: ",
            b": comment\n",
            b"data: [DONE]",
            b"event: x\n",
            "é☃😀".encode(),
            b"\xe2\x98",
            b"\x83",
        ]
    ),
    st.binary(max_size=40),
)
STREAMS = st.lists(PIECES, max_size=30).map(b"".join)


def _feed(stream: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    splitter, events, last = SSESplitter(), [], 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        events += splitter.feed(stream[last:cut])
        last = cut
    return events, splitter.flush()


@settings(max_examples=400, deadline=None, derandomize=True)
@given(STREAMS, st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_splitter_is_chunking_invariant_and_lossless(stream: bytes, cuts: list[int]) -> None:
    whole_events, whole_rest = _feed(stream, [])
    events, rest = _feed(stream, cuts)
    assert (events, rest) == (whole_events, whole_rest)  # any chunking, same events
    assert b"".join(events) + rest == stream  # no byte lost, added or reordered


@settings(max_examples=400, deadline=None, derandomize=True)
@given(STREAMS, st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_parser_never_raises_and_agrees_with_the_reference(stream: bytes, cuts: list[int]) -> None:
    parser, payloads, last = SSEParser(), [], 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        payloads += parser.feed(stream[last:cut])
        last = cut
    payloads += parser.close()
    events, rest = _feed(stream, [])
    reference = [p for raw in [*events, rest] if raw.strip() and (p := event_json(raw)) is not None]
    assert payloads == reference and all(isinstance(p, dict) for p in payloads)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON.map(orjson.dumps),
    st.fixed_dictionaries(
        {"model": JSON | st.text(max_size=300), "messages": JSON}, optional={"stream": JSON}
    ).map(orjson.dumps),
)


def test_handlers_never_hit_an_internal_error() -> None:
    with (
        threaded_stack(single()) as stack,
        httpx.Client(base_url=stack.proxy_url) as http,
    ):

        @settings(
            max_examples=300, deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )  # fmt: skip
        @given(body=BODIES, path=st.sampled_from(["chat/completions", "completions", "embeddings"]))
        def check(body: bytes, path: str) -> None:
            r = http.post(f"/v1/{path}", content=body, headers={"Content-Type": "application/json"})
            if r.status_code >= 400 and r.headers.get("Content-Type", "").startswith(
                "application/json"
            ):
                error: Any = r.json().get("error") if isinstance(r.json(), dict) else None
                assert not (isinstance(error, dict) and error.get("code") == "internal_error")

        check()
        internal = stack.app[REGISTRY].get_sample_value(
            "tbg_internal_errors_total", {"where": "v1"}
        )
        assert internal == 0
