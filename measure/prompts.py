"""The prompt set: a built-in default (package data ``prompts.jsonl``) or a user JSONL file.

Each line is an object with an ``id`` (unique string) and either ``messages`` (chat messages) or
``prompt`` (a string, sent as one user message); optionally ``tools``, ``tool_choice`` and
``response_format``, sent as they are (the report then shows the decisions: measure/decisions.py). The digest of the set goes into the run
parameters, so a resumed measurement cannot silently mix two different prompt sets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_NAME = "builtin"


class PromptError(ValueError):
    """A prompt file is missing, unreadable or not in the expected shape."""


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content)
    options: str = ""  # tools / tool_choice / response_format, as canonical JSON ("" for none)

    def request_options(self) -> dict[str, Any]:
        return dict(json.loads(self.options)) if self.options else {}

    @property
    def kind(self) -> str:
        """`tools` (tools offered), `json` (a JSON response_format) or `plain`."""
        opts = self.request_options()
        if opts.get("tools"):
            return "tools"
        fmt = opts.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            return "json"
        return "plain"

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[Prompt, ...]

    @property
    def digest(self) -> str:
        blob = json.dumps([[p.id, p.messages] for p in self.prompts], sort_keys=True)
        if any(p.options for p in self.prompts):  # sets without options keep their digest
            blob += json.dumps([p.options for p in self.prompts])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def head(self, n: int | None) -> PromptSet:
        """The first ``n`` prompts (all when None)."""
        if n is None or n >= len(self.prompts):
            return self
        if n < 1:
            raise PromptError("--prompt-limit must be at least 1")
        return PromptSet(f"{self.name}[:{n}]", self.prompts[:n])


OPTION_KEYS = ("tools", "tool_choice", "response_format")


def _options(obj: dict[str, Any], where: str) -> str:
    opts = {k: obj[k] for k in OPTION_KEYS if k in obj}
    if "tools" in opts and not (isinstance(opts["tools"], list) and opts["tools"]):
        raise PromptError(f"{where}: 'tools' must be a non-empty list")
    if "response_format" in opts and not isinstance(opts["response_format"], dict):
        raise PromptError(f"{where}: 'response_format' must be an object")
    return json.dumps(opts, sort_keys=True, separators=(",", ":")) if opts else ""


def _prompt(obj: Any, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise PromptError(f"{where}: expected a JSON object")
    prompt = _plain_prompt(obj, where)
    options = _options(obj, where)
    return Prompt(prompt.id, prompt.messages, options) if options else prompt


def _plain_prompt(obj: dict[str, Any], where: str) -> Prompt:
    pid = obj.get("id")
    if not isinstance(pid, str | int) or isinstance(pid, bool) or str(pid) == "":
        raise PromptError(f"{where}: 'id' must be a non-empty string")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise PromptError(f"{where}: 'messages' must be a non-empty list")
        out = []
        for m in msgs:
            if not (
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                raise PromptError(f"{where}: each message needs string 'role' and 'content'")
            out.append((m["role"], m["content"]))
        return Prompt(str(pid), tuple(out))
    text = obj.get("prompt")
    if not isinstance(text, str) or not text:
        raise PromptError(f"{where}: needs 'messages' (list) or 'prompt' (string)")
    return Prompt(str(pid), (("user", text),))


def parse_prompts(text: str, name: str) -> PromptSet:
    prompts: list[Prompt] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{name}:{i}: not JSON ({exc.msg})") from None
        prompts.append(_prompt(obj, f"{name}:{i}"))
    if not prompts:
        raise PromptError(f"{name}: no prompts")
    ids = [p.id for p in prompts]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise PromptError(f"{name}: duplicate prompt ids: {', '.join(dup[:5])}")
    return PromptSet(name, tuple(prompts))


def load_prompts(path: str | Path | None) -> PromptSet:
    """The built-in set when ``path`` is None, else the JSONL file."""
    if path is None:
        text = resources.files("measure").joinpath("prompts.jsonl").read_text("utf-8")
        return parse_prompts(text, DEFAULT_NAME)
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as exc:
        raise PromptError(f"cannot read {p}: {exc.strerror or exc}") from None
    return parse_prompts(text, str(p))
