"""The prompt set: a built-in default (package data ``prompts.jsonl``) or a user JSONL file.

Each line is an object with an ``id`` (unique string) and either ``messages`` (chat messages) or
``prompt`` (a string, sent as one user message). The digest of the set goes into the run
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

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[Prompt, ...]

    @property
    def digest(self) -> str:
        blob = json.dumps([[p.id, p.messages] for p in self.prompts], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def head(self, n: int | None) -> PromptSet:
        """The first ``n`` prompts (all when None)."""
        if n is None or n >= len(self.prompts):
            return self
        if n < 1:
            raise PromptError("--prompt-limit must be at least 1")
        return PromptSet(f"{self.name}[:{n}]", self.prompts[:n])


def _prompt(obj: Any, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise PromptError(f"{where}: expected a JSON object")
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
