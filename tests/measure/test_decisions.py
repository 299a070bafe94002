"""`tbg measure` with prompts that carry tools (a forced function) or a JSON response_format: the
runs record their tool calls and the report shows the decisions; a plain prompt set has none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from measure.prompts import PromptError, parse_prompts
from reference.launch import ReferenceProcess
from tests.measure.helpers import load_json, tbg

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]
FORCED = {"type": "function", "function": {"name": "get_weather"}}
LINES = [
    {"id": "w1", "prompt": "The weather in Rome for 2 days, as JSON.", "tools": TOOLS,
     "tool_choice": FORCED},
    {"id": "w2", "prompt": "Call the weather tool for Oslo.", "tools": TOOLS, "tool_choice": FORCED},
    {"id": "j1", "prompt": "Answer in JSON: what is two plus two?",
     "response_format": {"type": "json_object"}},
]  # fmt: skip


def test_prompt_options_set_the_kind_and_enter_the_digest() -> None:
    text = "\n".join(json.dumps(obj) for obj in LINES)
    ps = parse_prompts(text, "x")
    assert [p.kind for p in ps.prompts] == ["tools", "tools", "json"]
    assert ps.prompts[0].request_options()["tool_choice"] == FORCED
    plain = parse_prompts('{"id": "a", "prompt": "hi"}', "x")
    assert plain.prompts[0].kind == "plain" and plain.prompts[0].options == ""
    other = parse_prompts(text.replace("Rome", "Milan"), "x")
    assert ps.digest != parse_prompts(text.replace('"json_object"', '"text"'), "x").digest
    assert ps.digest != other.digest
    with pytest.raises(PromptError, match="tools"):
        parse_prompts('{"id": "a", "prompt": "hi", "tools": []}', "x")


@pytest.mark.reference
@pytest.mark.slow
def test_measure_reports_decisions(thermostat_ref: ReferenceProcess, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(obj) for obj in LINES) + "\n", "utf-8")
    out = tmp_path / "dec"
    cp = tbg(
        "measure", "--base-url", thermostat_ref.base_url, "--model", "smollm2",
        "--prompts", str(prompts), "--runs", "4", "--max-tokens", "12", "--out", str(out),
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text("utf-8").splitlines()]
    assert all(r["tool_calls"][0][0] == "get_weather" for r in runs if r["key"]["prompt"] != "j1")
    d = load_json(out / "report.json")["decisions"]
    assert (d["prompts"], d["runs_compared"]) == (3, 9)
    assert (d["tool"]["compared"], d["tool"]["changed"]) == (6, 0)  # forced: never another tool
    assert d["arguments"]["compared"] == 6 and d["arguments"]["changed"] > 0  # sampled at T 0.3
    assert d["field"]["compared"] == 3
    md = (out / "report.md").read_text("utf-8")
    assert "## Decisions" in md and "other arguments" in md and "10-step agent run" in md
