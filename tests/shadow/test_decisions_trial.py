"""The Worker's trial carries decisions: tallied for tools/json classes only, each replay against the
primary as captured, tool calls kept through the text fallback, replays of a tool-call primary
long enough to write its call, and the outcome picklable for the worker process."""

from __future__ import annotations

import pickle

from estimator.model import Run, ToolCall
from estimator.online import OnlineConfig, OnlineEstimator
from proxy.shadow.classes import RequestClass
from proxy.shadow.config import ShadowConfig
from proxy.shadow.trial import comparable_runs, compare_trial, replay_length
from proxy.tap import RequestInfo

REQUEST = RequestInfo(route="chat", upstream="u", model_name="m", body={"messages": []},
                      raw_body=b"{}", headers={}, stream=False)  # fmt: skip


def _call(args: str, logprobs: bool = False) -> Run:
    tokens = tuple(args)
    lps = tuple(-0.1 for _ in tokens) if logprobs else None
    return Run(tokens, lps, None, "", "stop", tool_calls=(ToolCall("f", args),))


def _compare(runs: tuple[Run, ...], kind: str, decided: tuple[Run, ...] | None = None) -> object:
    est = OnlineEstimator(OnlineConfig())
    cls = RequestClass("chat", kind, "whole")
    return compare_trial(est.compare, ShadowConfig(), b"k" * 16, 1, REQUEST, runs, cls, decided)


def test_decisions_only_for_tools_and_json_trials() -> None:
    runs = (_call('{"a": 1}'), _call('{"a": 2}'))
    tools = _compare(runs, "tools")
    assert tools.decisions is not None and tools.decisions.arguments_changed == 1  # type: ignore[attr-defined]
    assert _compare(runs, "plain").decisions is None  # type: ignore[attr-defined]
    again = pickle.loads(pickle.dumps(tools))
    assert again.decisions == tools.decisions and again.request_class == tools.request_class


def test_decisions_compare_with_the_primary_even_when_the_tokens_leave_it_out() -> None:
    primary = _call('{"a": 1}')  # captured before logprobs were known: text only
    replays = (_call('{"a": 2}', logprobs=True), _call('{"a": 2}', logprobs=True))
    runs = comparable_runs((primary, *replays))
    assert runs == replays  # the tokens compare the two replays only
    out = _compare(runs, "tools", (primary, *replays))
    assert out.decisions.replays == 2 and out.decisions.arguments_changed == 2  # type: ignore[attr-defined]


def test_the_text_fallback_keeps_the_tool_calls() -> None:
    mixed = (_call('{"a": 1}', logprobs=True), _call("{}"), _call("[]"))
    assert [r.tool_calls for r in comparable_runs(mixed)] == [r.tool_calls for r in mixed]


def test_a_tool_call_primary_without_usage_or_logprobs_bounds_its_replays_by_its_call() -> None:
    args = '{"city": "Paris", "days": 2}'
    length = replay_length(_call(args), None, {})
    assert length >= len(args) + len("f")
    assert replay_length(_call(args), None, {"max_tokens": 12}) == 12  # the client's own limit
