"""One trial, as the Worker builds it: the primary's run from its captured answer, the replays'
runs made comparable with it, and their comparison with the exemplars it shows. Pure functions:
safe in a worker thread or in the shadow worker process.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from estimator.builders import BuildError, text_tokens
from estimator.decisions import tally_trial
from estimator.model import Run, ToolCall, Trial, TrialContext
from estimator.online import TrialComparison
from proxy.shadow.classes import RequestClass
from proxy.shadow.config import ShadowConfig
from proxy.shadow.messages import Compared, Job
from proxy.shadow.routes import route
from proxy.shadow.view import Exemplar
from proxy.tap import RequestInfo


def compare_trial(
    compare: Callable[[Trial], TrialComparison],
    config: ShadowConfig,
    hash_key: bytes,
    job: int,
    request: RequestInfo,
    runs: tuple[Run, ...],
    request_class: RequestClass | None = None,
    decision_runs: tuple[Run, ...] | None = None,
) -> Compared:
    """Compare one trial and pick its exemplars; touches no state (safe in a thread or process).
    The load bucket is left empty: the Aggregator files the trial under the proxy's."""
    digest = hashlib.blake2b(request.raw_body, key=hash_key, digest_size=8).hexdigest()
    context = TrialContext(request.upstream, request.model_name, "")
    comparison = compare(Trial(digest, runs, context))
    now = time.time()
    seen: set[tuple[int, str, str]] = set()
    exemplars: list[Exemplar] = []
    for div in comparison.exemplars:
        # One exemplar per distinct split: with k replays the same fork shows up in many pairs.
        low, high = sorted((div.token_a, div.token_b))
        split = (div.position, low, high)
        if split in seen:
            continue
        seen.add(split)
        text = None
        if config.record_text:
            text = {
                "input": request.body.get("messages", request.body.get("prompt")),
                "run_a": runs[div.run_a].text,
                "run_b": runs[div.run_b].text,
            }
        exemplars.append(
            Exemplar(now, request.upstream, request.model_name, context.load_bucket, digest,
                     div.position, div.token_a, div.token_b, div.logprob_a, div.logprob_b, text)
        )  # fmt: skip
    key = (request.upstream, request.model_name)
    # Decisions compare each replay with the primary: the runs as captured, primary first (the
    # comparable runs may have left the primary out).
    decisions = None
    if request_class is not None:
        decided = decision_runs if decision_runs is not None else runs
        decisions = tally_trial(decided, request_class.kind, config.decision_fields)
    return Compared(job, key, comparison, tuple(exemplars), request_class, decisions=decisions)


def primary_run(job: Job) -> Run:
    if job.stream:
        return route(job.route).stream_run(list(job.events))
    if job.response_body is None:
        raise BuildError("no response body captured")
    return route(job.route).run(orjson.loads(job.response_body))


def replay_length(primary: Run, completion_tokens: int | None, body: Mapping[str, Any]) -> int:
    """How many tokens a replay may generate: as many as the primary did.

    The count comes from the primary's usage, or from its logprobs (one entry per token). Without
    either (a text-only upstream streaming without `include_usage`), the primary's pieces are
    stream chunks, not tokens, and capping a replay at their number would cut every replay short
    and count a divergence that is not there; its text's length in bytes bounds its token count
    instead (every token has at least one byte; a tool call's name and arguments count too, with a
    margin for its markup), within the client's own limit. A replay that
    agrees stops where the primary stopped either way. An empty primary (EOS first) is still
    worth one token: a replay that does not stop at once diverges at position 0.
    """
    if completion_tokens is not None:
        return max(1, completion_tokens)
    if primary.logprobs is not None:
        return max(1, len(primary.tokens))
    bound = max(1, len(primary.text.encode()) + sum(map(_call_bytes, primary.tool_calls)))
    limit = body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        bound = min(bound, limit)
    return bound


# A tool call's tokens write its name and arguments, and around them markup that may be special
# tokens of few bytes each (e.g. `<tool_call>` tags): a margin per call keeps the bound above them.
_CALL_MARGIN = 32


def _call_bytes(call: ToolCall) -> int:
    return len(call.name.encode()) + len(call.arguments.encode()) + _CALL_MARGIN


def usage_tokens(job: Job) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from the primary's usage, when the upstream sent one
    (the Responses API names them input_tokens and output_tokens)."""
    usage: Any = None
    adapter = route(job.route)
    if job.stream:
        for event in reversed(job.events):
            if found := adapter.usage(event):
                usage = found
                break
    elif job.response_body is not None:
        with contextlib.suppress(orjson.JSONDecodeError):
            answer = orjson.loads(job.response_body)
            usage = adapter.usage(answer) if isinstance(answer, Mapping) else None
    if not isinstance(usage, Mapping):
        return None, None
    prompt, completion = adapter.token_counts(usage)
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def comparable_runs(runs: tuple[Run, ...]) -> tuple[Run, ...]:
    """Runs that can be compared position by position.

    A run without logprobs is tokenised from its text (the builders' fallback), which does not line
    up with real tokens. When the two kinds are mixed (a primary captured before logprobs support
    was detected, or with augment_logprobs off), keep the runs with real tokens if there are two or
    more of them, else compare every run by its text tokens.
    """
    real = tuple(r for r in runs if r.logprobs is not None)
    if len(real) == len(runs) or not real:
        return runs
    if len(real) >= 2:
        return real
    return tuple(
        Run(tokens=text_tokens(r.text), logprobs=None, top_logprobs=None, text=r.text,
            finish_reason=r.finish_reason, tool_calls=r.tool_calls)
        for r in runs
    )  # fmt: skip
