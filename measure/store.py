"""Resumable run records: one JSON line per completed request in ``DIR/runs.jsonl``.

A record's key is (role, prompt id, run index, temperature, load level); the parameters that
change what a run means (endpoint, model, max tokens, top-k, prompt set digest, ...) are written
once to ``DIR/params.json``. A rerun with the same DIR loads the records, skips the keys already
done, and refuses to continue when the parameters differ (mixing them would bias every estimate).
A line cut short by a kill is ignored (and reported), never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from estimator.model import Run, ToolCall, TopLogprobs
from estimator.tokens import resolve_run

RUNS = "runs.jsonl"
PARAMS = "params.json"


class StoreError(RuntimeError):
    """The output directory holds a measurement with other parameters, or cannot be written."""


@dataclass(frozen=True)
class Key:
    # "sut" (system under test), "ref" (the paper method's reference endpoint) or "cand" (the
    # candidate endpoint of --compare)
    role: str
    prompt: str
    run: int
    temperature: float
    level: int  # concurrency the run was issued under


@dataclass(frozen=True)
class Record:
    key: Key
    tokens: tuple[str, ...]
    logprobs: tuple[float, ...] | None
    top_logprobs: tuple[TopLogprobs, ...] | None
    text: str
    finish_reason: str | None
    completion_tokens: int
    latency_s: float
    started: float  # time.time() at send
    session: str  # one id per process invocation (throughput is computed per session)
    # positions whose token strings collided and were told apart (estimator.tokens)
    token_collisions: int = 0
    tool_calls: tuple[tuple[str, str], ...] = ()  # (name, arguments) of each call, in order

    def run(self) -> Run:
        return Run(
            self.tokens,
            self.logprobs,
            self.top_logprobs,
            self.text,
            self.finish_reason,
            self.token_collisions,
            tuple(ToolCall(name, args) for name, args in self.tool_calls),
        )

    def to_json(self) -> str:
        d = asdict(self)
        d["key"] = asdict(self.key)
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"))

    @staticmethod
    def from_json(obj: Mapping[str, Any]) -> Record:
        k = obj["key"]
        tops = obj.get("top_logprobs")
        lps = obj.get("logprobs")
        rec = Record(
            Key(
                str(k["role"]),
                str(k["prompt"]),
                int(k["run"]),
                float(k["temperature"]),
                int(k["level"]),
            ),
            tuple(obj["tokens"]),
            None if lps is None else tuple(float(x) for x in lps),
            None
            if tops is None
            else tuple(tuple((str(t), float(v)) for t, v in pos) for pos in tops),
            str(obj.get("text", "")),
            obj.get("finish_reason"),
            int(obj.get("completion_tokens", len(obj["tokens"]))),
            float(obj.get("latency_s", 0.0)),
            float(obj.get("started", 0.0)),
            str(obj.get("session", "")),
            int(obj.get("token_collisions", 0)),
            tuple((str(n), str(a)) for n, a in obj.get("tool_calls") or ()),
        )
        if "token_collisions" in obj or rec.top_logprobs is None:
            return rec
        # Written before tokens were keys: alternatives are keyed by text, and strings that
        # collide (pieces of one multi-byte character) are told apart here.
        run = resolve_run(rec.run())
        return replace(rec, top_logprobs=run.top_logprobs, token_collisions=run.token_collisions)


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Parameters set in both that differ (a later command may add parameters, e.g. the paper
    method's reference endpoint, to a directory measured without them)."""
    keys = sorted(set(old) & set(new))
    return [
        f"{k}: {old.get(k)!r} (in DIR) != {new.get(k)!r} (now)"
        for k in keys
        if old.get(k) != new.get(k)
    ]


class Store:
    """The records of one output directory; ``append`` writes and flushes one line per run."""

    def __init__(self, directory: Path, params: Mapping[str, Any]) -> None:
        self.dir = directory
        self.params = dict(params)
        self.records: dict[Key, Record] = {}
        self.skipped_lines = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.dir}: {exc.strerror or exc}") from None
        ppath = self.dir / PARAMS
        if ppath.exists():
            old = json.loads(ppath.read_text("utf-8"))
            diff = _diff(old, self.params)
            if diff:
                raise StoreError(
                    f"{self.dir} holds a measurement with other parameters; use another --out "
                    "directory or the same parameters:\n  " + "\n  ".join(diff)
                )
            if set(self.params) - set(old):
                merged = {**old, **self.params}
                ppath.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", "utf-8")
        else:
            ppath.write_text(json.dumps(self.params, indent=2, sort_keys=True) + "\n", "utf-8")
        self._load()
        self._fh = (self.dir / RUNS).open("a", encoding="utf-8")

    def _load(self) -> None:
        path = self.dir / RUNS
        if not path.exists():
            return
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = Record.from_json(json.loads(line))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    self.skipped_lines += 1  # a line cut short by a kill: that run is redone
                    continue
                self.records[rec.key] = rec
        if self.skipped_lines:
            # Rewrite without the broken line so the file stays valid JSONL.
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(r.to_json() + "\n" for r in self.records.values()), "utf-8")
            tmp.replace(path)

    def done(self, key: Key) -> bool:
        return key in self.records

    def append(self, rec: Record) -> None:
        self.records[rec.key] = rec
        self._fh.write(rec.to_json() + "\n")
        self._fh.flush()

    def select(self, role: str) -> list[Record]:
        return [r for r in self.records.values() if r.key.role == role]

    def close(self) -> None:
        self._fh.close()


def pending(store: Store, keys: Iterable[Key]) -> list[Key]:
    return [k for k in keys if not store.done(k)]
