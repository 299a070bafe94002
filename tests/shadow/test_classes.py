"""Request classes: decided from the request body, a fixed set of 18, and picklable for the
shadow worker process."""

from __future__ import annotations

import pickle
from itertools import product
from typing import Any

import pytest

from proxy.shadow.channel import frame
from proxy.shadow.classes import KINDS, ROUTES, STREAMING, RequestClass, classify, request_kind

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({}, "plain"),
        ({"tools": [TOOL]}, "tools"),
        ({"functions": [{"name": "f"}]}, "tools"),
        ({"tools": [], "functions": None}, "plain"),  # empty: nothing offered
        ({"tools": "not a list"}, "plain"),
        ({"response_format": {"type": "json_object"}}, "json"),
        ({"response_format": SCHEMA}, "json"),
        ({"response_format": {"type": "text"}}, "plain"),
        ({"response_format": "json_object"}, "plain"),  # not an OpenAI response_format
        ({"tools": [TOOL], "response_format": SCHEMA}, "tools"),  # tools decide what is decoded
    ],
)
def test_the_kind_comes_from_the_body(body: dict[str, Any], kind: str) -> None:
    assert request_kind(body) == kind


def test_the_class_set_is_fixed_and_small() -> None:
    seen = {
        classify(route, body, stream)
        for route, body, stream in product(
            ROUTES, ({}, {"tools": [TOOL]}, {"response_format": SCHEMA}), (False, True)
        )
    }
    assert len(seen) == len(ROUTES) * len(KINDS) * len(STREAMING) == 18
    assert classify("chat", {}, True) == RequestClass("chat", "plain", "stream")
    assert classify("completions", {"tools": [TOOL]}, False).label == "completions/tools/whole"
    ordered = sorted(seen, key=RequestClass.order)
    assert ordered[0] == RequestClass("chat", "plain", "whole")
    assert ordered[-1] == RequestClass("responses", "json", "stream")
    with pytest.raises(ValueError, match="embeddings"):
        classify("embeddings", {}, False)  # never eligible: no class for it


def test_a_class_pickles_through_the_channel() -> None:
    value = RequestClass("chat", "json", "whole")
    assert pickle.loads(frame(value)[4:]) == value
