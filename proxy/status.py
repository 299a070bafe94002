"""`tbg status [URL]`: what a running proxy has measured, for a person: per upstream and model
the T_bg estimate and its 95 % interval, the ceiling, a verdict and what to do next.

The same text is served by the proxy itself at `GET /tbg?format=text` (or with `Accept:
text/plain`); `render_text` is the one rendering of a /tbg report. `--json` passes the JSON through.
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.canary_status import canary_lines
from proxy.cliparse import Parser
from proxy.measured_text import PROMPT_TEXT, describe_measured, describe_seeded
from proxy.shadow.decisions_text import decision_lines
from proxy.shadow.fingerprint_text import status_line as fingerprint_line

DEFAULT_URL = "http://127.0.0.1:8080"

GUIDE = (
    "T_bg is the `estimate` (Boltzmann likelihood on the replay tree): the sampling temperature at "
    "which an ideal, bit-exact copy of the model would vary as much as this stack does at T=0, on "
    "the model's own logit scale. 0 = reruns are bit-identical; compare a stack with itself across "
    "load and versions, not across models (docs/science.md). The jitter temperature is a cross-check "
    "from how much the logprobs move between runs, not T_bg; p_identical is the share of compared "
    "positions where they did not move at all. Field by field: docs/shadow.md#reading-get-tbg."
)


def _g(x: Any) -> str:
    """Three significant figures: T_bg is known to a few percent at best."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.3g}"


def pairs_needed(pairs: int, estimate: float, lower: float, upper: float, ceiling: float) -> int:
    """Rough number of pairs after which the interval would exclude the ceiling, if the estimate
    held and the interval narrowed as 1/sqrt(pairs). 0 when it cannot be projected."""
    if pairs <= 0 or estimate == ceiling:
        return 0
    half = (upper - estimate) if estimate < ceiling else (estimate - lower)
    ratio = half / abs(ceiling - estimate)
    return math.ceil(pairs * ratio * ratio) if math.isfinite(ratio) else 0


def _age(seconds: Any) -> str:
    """`12 s ago`, `3.5 min ago`, `2.0 h ago`: when the estimate last changed."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "last change unknown"
    if seconds < 120:
        return f"last changed {seconds:.0f} s ago"
    if seconds < 7200:
        return f"last changed {seconds / 60:.1f} min ago"
    return f"last changed {seconds / 3600:.1f} h ago"


def _eligible(entry: Mapping[str, Any]) -> str:
    n = entry.get("eligible")
    seen = "—" if n is None else str(n)
    return f"{seen} eligible (temperature-0) requests seen, {entry.get('pairs', 0)} pairs compared"


def verdict(entry: Mapping[str, Any], ceiling: float | None, more: str) -> tuple[str, str]:
    """(verdict, what to do next) for one /tbg estimate against `ceiling`; `more` says how to
    get more data where the command is used (e.g. "raise --requests")."""
    pairs = int(entry.get("pairs") or 0)
    est, lo, hi = entry.get("estimate"), entry.get("lower"), entry.get("upper")
    if pairs == 0:
        return ("not enough data: 0 replay pairs yet", f"send temperature-0 traffic; {more}")
    if est is None or lo is None or hi is None:
        return (
            f"no T_bg yet: {pairs} pairs, none carried logprobs (method {entry.get('method')})",
            "use an upstream that returns logprobs, or keep shadow.augment_logprobs on",
        )
    if ceiling is None:
        return ("no ceiling configured", "set shadow.ceiling (or --ceiling) to get a verdict")
    if hi < ceiling:
        return (
            f"below the ceiling {ceiling:g}: T=0 outputs vary no more than an ideal copy of the "
            f"model sampling at T <= {hi:.3g}",
            "nothing to do; the TbgAboveCeiling alert watches it",
        )
    if lo > ceiling:
        return (
            f"ABOVE the ceiling {ceiling:g}: this stack's T=0 outputs are measurably random",
            "see docs/runbooks/TbgAboveCeiling.md (batch-invariant kernels, smaller batches)",
        )
    need = pairs_needed(pairs, est, lo, hi, ceiling)
    hint = f", need ~{need} if the estimate holds" if need > pairs else ""
    return (
        f"undecided against the ceiling {ceiling:g} (the interval contains it): not enough "
        f"data, {pairs} pairs{hint}",
        more,
    )


def render_text(report: Mapping[str, Any], more: str = "wait, or raise shadow.sample_rate") -> str:
    """A /tbg report (JSON dict) as text for a person."""
    if report.get("shadow") == "off":
        return str(report.get("message", "shadow replay is off: nothing is measured"))
    lines: list[str] = []
    if isinstance(report.get("measured"), Mapping):  # first: whom the numbers below describe
        lines += [*describe_measured(report["measured"]), ""]
    for e in report.get("estimates", []):
        ceiling = e.get("ceiling")
        lines.append(f"{e['upstream']} / {e['model_name']}")
        lines.append(
            f"  T_bg      {_g(e.get('estimate'))}   95% interval [{_g(e.get('lower'))}, "
            f"{_g(e.get('upper'))}]   ({e.get('method')})"
        )
        lines.append(f"  ceiling   {_g(ceiling)}")
        lines.append(f"  age       {_age(e.get('age_seconds'))}; {_eligible(e)}")
        said, todo = verdict(e, ceiling, more)
        lines.append(f"  verdict   {said}")
        lines.append(f"  next      {todo}")
        lines.append(
            f"  evidence  {e.get('diverged_trials', 0)} of {e.get('trials', 0)} trials diverged "
            f"(a trial: one request and its replays, the interval's unit; design effect "
            f"{_g(e.get('design_effect'))}, >= 1: how much runs of one request being alike widen "
            f"the interval), {e.get('diverged', 0)} of {e.get('pairs', 0)} replay pairs, "
            f"{e.get('tokens_at_risk', 0)} tokens compared; {_g(e.get('hazard'))} divergences "
            "per token"
        )
        lines.append(
            f"  jitter    temperature {_g(e.get('jitter_temperature'))} (a cross-check, not T_bg); "
            f"p_identical {_g(e.get('p_identical'))} (share of compared positions whose logprobs "
            "were bit-identical between runs: 1 = the logits never moved)"
        )
        for bucket, b in (e.get("by_load") or {}).items():
            lines.append(
                f"  load {bucket:>3}  T_bg {_g(b.get('estimate'))} [{_g(b.get('lower'))}, "
                f"{_g(b.get('upper'))}], {b.get('diverged', 0)}/{b.get('pairs', 0)} diverged"
            )
        prompt = "short"
        for c in e.get("by_class") or ():
            if c.get("prompt", prompt) != prompt:  # classes come ordered by prompt length
                prompt = c["prompt"]
                lines.append(f"  prompts {prompt} ({PROMPT_TEXT.get(prompt, '')}):")
            name = f"{c.get('route')}/{c.get('kind')}/{c.get('streaming')}"
            lines.append(
                f"  class {name:<24} T_bg {_g(c.get('estimate'))} [{_g(c.get('lower'))}, "
                f"{_g(c.get('upper'))}], {c.get('diverged', 0)}/{c.get('pairs', 0)} diverged"
            )
        backend = fingerprint_line(e.get("fingerprints"))
        if backend is not None:
            lines.append(backend)
        lines += decision_lines(e)
        lines.append("")
    lines += describe_seeded(report.get("seeded") or (), _g)
    if not report.get("estimates"):
        seen = report.get("eligible")
        lines += [
            "no estimate yet: no temperature-0 request has been replayed"
            + (f" ({seen} eligible requests seen)" if seen is not None else ""),
            "",
        ]
    lines += canary_lines(report)  # live canaries side by side (docs/canary.md)
    acc = report.get("accounting") or {}
    if acc:
        lines.append(
            f"replays: sampled {acc.get('sampled', 0)} = replayed {acc.get('replayed', 0)} + "
            f"dropped {acc.get('dropped', 0)} + failed {acc.get('failed', 0)}; queue "
            f"{report.get('queue_depth', 0)}"
        )
    lines.append(textwrap.fill(GUIDE, width=100))
    return "\n".join(lines)


def wants_text(query: Mapping[str, str], accept: str) -> bool:
    """`?format=text`, or an Accept header that asks for text/plain before JSON."""
    if query.get("format") == "text":
        return True
    first = accept.split(",")[0].split(";")[0].strip().lower()
    return first == "text/plain"


class StatusError(RuntimeError):
    """One line for the user: what is wrong with the URL or what answers there."""


def fetch(base: str, timeout: float) -> tuple[dict[str, Any], bytes]:
    """GET {base}/tbg: the parsed report and its raw bytes, or StatusError."""
    import httpx  # only the CLI needs a client; the proxy imports this module for render_text

    url = f"{base}/tbg"
    try:
        resp = httpx.get(url, timeout=timeout, headers={"Accept": "application/json"})
    except httpx.ConnectError as exc:
        raise StatusError(
            f"cannot connect to {base} ({exc}): is a proxy running there (`tbg serve`)?"
        ) from None
    except httpx.TimeoutException:
        raise StatusError(f"{url} did not answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise StatusError(f"{url}: {exc}") from None
    if resp.status_code == 404:
        raise StatusError(
            f"{url} answered 404: not a tbg proxy, or one without shadow replay "
            "(start it with --model NAME --sample-rate 0.1)"
        )
    if resp.status_code != 200:
        raise StatusError(f"{url} answered HTTP {resp.status_code}")
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or "estimates" not in body:
        raise StatusError(f"{url} is not a tbg report: is {base} a tbg proxy?")
    if body.get("shadow") == "off":
        raise StatusError(
            f"{base} has shadow replay off, so nothing is measured: start it with --model NAME "
            "--sample-rate 0.1, or a shadow: section (docs/configuration.md)"
        )
    return body, resp.content


def base_url(url: str) -> str:
    """The proxy's root from what a user may paste: with or without /v1 or /tbg, or host:port."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    for tail in ("/tbg", "/v1"):
        if url.endswith(tail):
            url = url[: -len(tail)]
    return url


def main(argv: list[str]) -> int:
    parser = Parser("tbg status", description=__doc__)
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help="the proxy's address")
    parser.add_argument("--json", action="store_true", help="print /tbg's JSON unchanged")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.fail("--timeout must be > 0")
    base = base_url(args.url)
    try:
        report, raw = fetch(base, args.timeout)
    except StatusError as exc:
        print(f"tbg status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(raw.decode("utf-8") + "\n")
    else:
        print(render_text(report))
    return 0
