"""Coverage-guided fuzzing (atheris) of the SSE/JSON tee: proxy/sse.py's splitter and parser.

`python -m bench.fuzz_sse -atheris_runs=100000` (any libFuzzer flag works). Each input is split
into chunks at positions taken from its first bytes; the checks: feeding in chunks gives the same
events as feeding whole, no byte is lost or added, the parser never raises and returns dicts.
Result recorded in docs/configuration.md ("Reliability checks").
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

with atheris.instrument_imports():
    from proxy.sse import SSEParser, SSESplitter, event_json, tokens_from_event


def _chunks(data: bytes) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted({c % len(data) for c in data[:4]})
    body, pieces, last = data, [], 0
    for cut in [*cuts, len(body)]:
        pieces.append(body[last:cut])
        last = cut
    return pieces


def test_one_input(data: bytes) -> None:
    whole = SSESplitter()
    whole_events = whole.feed(data)
    whole_rest = whole.flush()
    split = SSESplitter()
    events: list[bytes] = []
    parser = SSEParser()
    payloads = []
    for piece in _chunks(data):
        events += split.feed(piece)
        payloads += parser.feed(piece)
    rest = split.flush()
    payloads += parser.close()
    if (events, rest) != (whole_events, whole_rest) or b"".join(events) + rest != data:
        raise AssertionError("splitter disagrees with itself")
    reference = [p for raw in [*events, rest] if raw.strip() and (p := event_json(raw)) is not None]
    if payloads != reference:
        raise AssertionError("parser disagrees with the reference")
    for payload in payloads:
        if not isinstance(payload, dict):
            raise AssertionError("non-dict payload")
        for _ in tokens_from_event(payload):
            pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
