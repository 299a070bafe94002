"""What `tbg demo` shows: the live status (a rich `Live` frame on a terminal, progress lines off
one), the summary, what to explore while the servers stay up, and the command to run next."""

from __future__ import annotations

import os
import re
import shutil
import textwrap
import time
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from proxy.shadow.config import ModelPolicy
from proxy.status import verdict

SERVE_YOURS = "tbg serve --upstream http://127.0.0.1:8000/v1 --model MODEL"
PROGRESS_EVERY_S = 5.0  # off a terminal: one progress line at most this often


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "—" if x is None else format(x, spec)


def render(report: dict[str, Any], done: int, total: int, elapsed: float) -> str:
    """The live status as plain lines; on a terminal each is cut (never wrapped) to its width."""
    acc = report["accounting"]
    lines = [
        f"tbg demo — {elapsed:5.0f}s — primaries {done}/{total} — queue {report['queue_depth']}",
        f"  replays: sampled {acc['sampled']}, replayed {acc['replayed']}, "
        f"dropped {acc['dropped']}, failed {acc['failed']}",
    ]
    if not report["estimates"]:
        lines.append("  waiting for the first comparison …")
    for e in report["estimates"]:
        lines.append(
            f"  {e['upstream']}/{e['model_name']}: T_bg = {_fmt(e['estimate'])} "
            f"[{_fmt(e['lower'])}, {_fmt(e['upper'])}] ({e['method']})"
        )
        lines.append(
            f"    diverged {e['diverged']}/{e['pairs']} pairs over {e['tokens_at_risk']} tokens "
            f"compared: {_fmt(e['hazard'], '.1e')} divergences/token"
        )
        lines.append(f"    jitter σ {_fmt(e['jitter_sigma'], '.1e')} (a cross-check, not T_bg)")
        for bucket, b in e["by_load"].items():
            lines.append(
                f"      load {bucket:>3}: T_bg {_fmt(b['estimate'])} "
                f"[{_fmt(b['lower'])}, {_fmt(b['upper'])}]  diverged {b['diverged']}/{b['pairs']}"
            )
    return "\n".join(lines)


def progress_line(report: dict[str, Any], done: int, total: int, elapsed: float) -> str:
    """One line of progress, for a log or a pipe (the full frame is for a terminal)."""
    acc = report["accounting"]
    line = (
        f"tbg demo {elapsed:4.0f}s: primaries {done}/{total}, replays {acc['replayed']} done, "
        f"queue {report['queue_depth']}"
    )
    for e in report["estimates"][:1]:
        line += (
            f"; T_bg {_fmt(e['estimate'])} [{_fmt(e['lower'])}, {_fmt(e['upper'])}], "
            f"{e['diverged']}/{e['pairs']} pairs diverged"
        )
    return line


_ESTIMATE = re.compile(r"T_bg =? ?[0-9.—]+")


def frame(text: str) -> Text:
    """`text` as a rich frame: a bold header, the estimates highlighted, every line cut at the
    terminal's edge with an ellipsis (a wrapped line would throw the in-place redraw off)."""
    out = Text(text, no_wrap=True, overflow="ellipsis")
    out.stylize("bold", 0, len(text.split("\n", 1)[0]))
    out.highlight_regex(_ESTIMATE, "bold cyan")
    return out


class Screen:
    """The live status. On a terminal, a rich `Live` frame redrawn in place (started at the first
    `show`, stopped by `close` or a forced `show`, which leaves the last frame on screen), its
    lines cut to the terminal's width and the frame to its height. Off a terminal (logs, CI), one
    progress line every few seconds, and the full block only when forced (the final one)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._last = 0.0
        self._live: Live | None = None
        self._console = Console(file=out)

    def size(self) -> os.terminal_size:
        """The size of the terminal `out` writes to, read at every redraw (a resized terminal
        keeps working). rich would take COLUMNS and LINES over it, and an exported pair that no
        longer matches (a parent process's, a resized window's) piles up stale frames."""
        try:
            return os.get_terminal_size(self._out.fileno())
        except (OSError, ValueError, AttributeError):
            return shutil.get_terminal_size()

    def __enter__(self) -> Screen:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def show(self, text: str, force: bool = False, line: str | None = None) -> None:
        """`text` (the full block) on a terminal; off one, `line` (or `text` when no line is
        given) at most every PROGRESS_EVERY_S, and `text` when `force`."""
        now = time.monotonic()
        if self._tty:
            size = self.size()  # a pseudo-terminal may report 0 x 0: rich's defaults then
            self._console.size = (size.columns or 80, size.lines or 25)
            if self._live is None:
                # no refresh thread: the demo redraws when it has news; stdout/stderr written
                # meanwhile print above the frame instead of through it
                self._live = Live(frame(text), console=self._console, auto_refresh=False)
                self._live.start()
            else:
                self._live.update(frame(text), refresh=True)
            if force:
                self.close()
            return
        if force:
            self._out.write(text + "\n")
            self._last = now
        elif now - self._last >= PROGRESS_EVERY_S:
            self._out.write((text if line is None else line) + "\n")
            self._last = now
        self._out.flush()

    def close(self) -> None:
        """Stop redrawing; the last frame stays on screen."""
        if self._live is not None:
            self._live.stop()
            self._live = None


def wrap(text: str, out: TextIO) -> str:
    """On a terminal, wrap at words (not mid-word at its edge), indenting continuations; commands
    stay whole, to copy."""
    if not out.isatty():
        return text
    width = max(Screen(out).size().columns - 1, 40)
    return "\n".join(
        textwrap.fill(line, width, subsequent_indent=" " * (len(line) - len(line.lstrip()) + 4))
        if line and not line.lstrip().startswith(("curl ", "tbg ", "source "))
        else line
        for line in text.split("\n")
    )


def explore(proxy_url: str) -> str:
    """What to look at while the demo's servers stay up."""
    urls = [
        ("/ui", "the live page: T_bg over time, by load"),
        ("/tbg?format=text", f"the live estimate, for a person (also `tbg status {proxy_url}`)"),
        ("/tbg", "the same as JSON"),
        ("/metrics", "Prometheus metrics (tbg_*)"),
        ("/v1", "the OpenAI API (model smollm2), e.g."),
    ]
    width = max(len(proxy_url + path) for path, _ in urls) + 2
    return "\n".join(
        ["", "serving until Ctrl-C (T=0 requests you send are replayed and counted too):"]
        + [f"  {(proxy_url + path).ljust(width)}{what}" for path, what in urls]
        + [
            f"    curl {proxy_url}/v1/chat/completions -H 'Content-Type: application/json' "
            """-d '{"model": "smollm2", "temperature": 0, "max_tokens": 16, """
            """"messages": [{"role": "user", "content": "Why is the sky blue?"}]}'"""
        ]
    )


def next_step(proxy_url: str, activate: str | None = None) -> str:
    """The last lines: everything is stopped; the command that measures the user's own server."""
    lines = [
        f"stopped the proxy ({proxy_url}) and the reference upstream.",
        "next: measure your own server by putting the proxy in front of it:",
        f"  {SERVE_YOURS}",
        "  (your server's base URL, ending in /v1, and the model it serves; 8000 is vLLM's "
        "default port), then point your OpenAI client at http://127.0.0.1:8080/v1 and run "
        "`tbg status` (docs/shadow.md).",
    ]
    if activate:
        lines.insert(2, f"  in a new shell, first: {activate}")
    return "\n".join(lines)


def summary(
    final: dict[str, Any],
    errors: list[str],
    proxy_url: str,
    timed_out: bool,
    *,
    truth: float | None = None,
    ceiling: float = ModelPolicy().ceiling,
) -> str:
    acc = final["accounting"]
    lines = ["", "summary"]
    for e in final["estimates"]:
        known = f" (the reference samples at T = {truth:g})" if truth is not None else ""
        lines.append(
            f"  T_bg({e['model_name']} via {e['upstream']}) = {_fmt(e['estimate'])}, 95% interval "
            f"[{_fmt(e['lower'])}, {_fmt(e['upper'])}]{known}, method {e['method']}; "
            f"{e['diverged']} of {e['pairs']} run pairs diverged"
        )
        if e["method"] == "likelihood":
            said, todo = verdict(e, ceiling, "send more requests (--requests) to narrow it")
            lines.append(f"    verdict: {said}; next: {todo}")
    reasons = ", ".join(f"{k} {v}" for k, v in final.get("dropped_by_reason", {}).items())
    lines.append(
        f"  accounting: sampled {acc['sampled']} = replayed {acc['replayed']} + dropped "
        f"{acc['dropped']} + failed {acc['failed']}" + (f" (dropped: {reasons})" if reasons else "")
    )
    shown = final["exemplars"][:3]
    for ex in shown:
        lines.append(
            f"  divergence at token {ex['position']} (load {ex['load_bucket']}): "
            f"{ex['token_a']!r} ({_fmt(ex['logprob_a'], '.3f')}) vs {ex['token_b']!r} "
            f"({_fmt(ex['logprob_b'], '.3f')}), request {ex['request_hash']}"
        )
    if errors:
        lines.append(f"  {len(errors)} client errors, first: {errors[0]}")
    if timed_out:
        lines.append("  stopped at the time limit")
    lines.append(
        "  T_bg is a sampling temperature on the model's own logit scale: 0 = bit-reproducible at"
        " T=0; larger = more run-to-run variation (what the numbers mean: docs/science.md)."
    )
    lines.append(
        f"  served: {proxy_url}/v1 (OpenAI API), {proxy_url}/tbg (the estimate), "
        f"{proxy_url}/metrics (Prometheus), {proxy_url}/ui (the live page)"
    )
    return "\n".join(lines)
