"""Fast checks without the model: request validation, text/stop tracking, decode policies, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reference.engine import TextTracker
from reference.launch import ReferenceProcess, ReferenceStartError
from reference.model import CACHE_FOLDER, is_prepared
from reference.policy import (
    GreedyPolicy,
    NoisePolicy,
    SamplingParams,
    ThermostatPolicy,
    make_generator,
    policy_for,
)
from reference.requests import ApiError, parse_chat, parse_completion, parse_json

torch = pytest.importorskip("torch")


class CharTokenizer:
    """Token id = one character (ord); decode joins them."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def _feed(tracker: TextTracker, text: str) -> list[str]:
    return [tracker.push(ord(ch)) for ch in text]


def test_text_tracker_holds_back_possible_stop_prefix_and_cuts_at_stop() -> None:
    tracker = TextTracker(CharTokenizer(), ("END",))
    deltas = _feed(tracker, "abEN")
    assert "".join(deltas) == "ab"  # "EN" may become "END": held back
    assert tracker.push(ord("D")) == "" and tracker.stopped
    assert tracker.released == "ab"


def test_text_tracker_releases_false_alarm_and_flushes() -> None:
    tracker = TextTracker(CharTokenizer(), ("END",))
    assert "".join(_feed(tracker, "aEx")) == "aEx"
    assert "".join(_feed(tracker, "E")) == ""
    assert tracker.flush() == "E"


def test_parse_chat_defaults_and_logprobs() -> None:
    req = parse_chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 5,
            "stop": "\n",
        },
        "m",
        256,
    )
    p = req.params
    assert (p.max_tokens, p.greedy, p.top_logprobs, p.stop) == (256, True, 5, ("\n",))
    no_lp = parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "m", 9)
    assert no_lp.params.top_logprobs is None and no_lp.params.temperature == 1.0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "m", "messages": []}, 400),
        ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400),
    ],
)
def test_parse_chat_rejects(body: dict[str, object], status: int) -> None:
    with pytest.raises(ApiError) as err:
        parse_chat(body, "m", 16)
    assert err.value.status == status
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


def test_parse_completion_and_json() -> None:
    assert parse_completion({"model": "m", "prompt": [1, 2, 3]}, "m", 4).prompt_ids == (1, 2, 3)
    with pytest.raises(ApiError):
        parse_completion({"model": "m", "prompt": "x", "logprobs": 21}, "m", 4)
    with pytest.raises(ApiError):
        parse_completion({"model": "m", "prompt": ["a", "b"]}, "m", 4)
    with pytest.raises(ApiError):
        parse_json(b"[1, 2]")


GREEDY = SamplingParams(max_tokens=1, temperature=0.0)


def test_greedy_policy_reports_raw_log_softmax() -> None:
    z = torch.tensor([1.0, 3.0, 2.0])
    choice = GreedyPolicy().choose(z, GREEDY, make_generator(0))
    assert choice.token_id == 1
    assert torch.allclose(choice.logprobs, torch.log_softmax(z, dim=-1))


def test_thermostat_policy_samples_softmax_z_over_t() -> None:
    z = torch.tensor([0.0, -0.5, -3.0])
    policy, gen, n = ThermostatPolicy(0.5), make_generator(1), 4000
    counts = [0, 0, 0]
    for _ in range(n):
        choice = policy.choose(z, GREEDY, gen)
        counts[choice.token_id] += 1
    expected = torch.softmax(z / 0.5, dim=-1).tolist()
    for c, p in zip(counts, expected, strict=True):
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3
    assert torch.allclose(choice.logprobs, torch.log_softmax(z, dim=-1))  # raw, not z/T


def test_noise_policy_flip_rate_matches_phi() -> None:
    delta, sigma, n = 0.3, 0.5, 4000
    z = torch.tensor([delta, 0.0, -50.0])
    flips = sum(
        NoisePolicy(sigma).choose(z, GREEDY, make_generator(0)).token_id != 0 for _ in range(n)
    )
    predicted = 0.5 * math.erfc(delta / (sigma * math.sqrt(2.0)) / math.sqrt(2.0))  # Φ(−Δ/(σ√2))
    assert abs(flips / n - predicted) < 4 * math.sqrt(predicted * (1 - predicted) / n)


def test_policy_for_validates() -> None:
    assert policy_for("batched", None, None).name == "greedy"
    with pytest.raises(ValueError, match="temperature"):
        policy_for("thermostat", None, None)
    with pytest.raises(ValueError, match="sigma"):
        policy_for("noise", None, None)


def test_reference_process_reports_child_stderr_when_start_fails() -> None:
    with (
        pytest.raises(ReferenceStartError, match="needs --temperature"),
        ReferenceProcess(mode="thermostat", ready_timeout=60),
    ):
        pass


@pytest.mark.reference
@pytest.mark.slow
def test_prepare_converts_into_a_fresh_cache_atomically(tmp_path: Path) -> None:
    leftover = tmp_path / CACHE_FOLDER
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")  # a broken cache without the completion marker
    env = {**os.environ, "TBG_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "reference", "--prepare"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(leftover)
    assert is_prepared(leftover)
    config = json.loads((leftover / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):
        assert (leftover / name).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_FOLDER]  # no temp dirs left
