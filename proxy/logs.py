"""Structured JSON logging: fixed, bounded fields only, never prompt or completion text."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from types import TracebackType
from typing import Any, TextIO

import orjson

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus the record's `extra` fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1  # the last whole second formatted, and its text (one access line per
        self._second_text = ""  # request: strftime per line was a visible share of its cost)

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            # Where it happened, frame by frame; never str(exc): messages can carry prompt text.
            entry["exc_frames"] = frames(record.exc_info[2])
        return orjson.dumps(entry, default=str).decode()


def frames(tb: TracebackType | None, limit: int = 30) -> list[dict[str, Any]]:
    """The innermost `limit` frames of a traceback as {file, line, function}, outermost first."""
    return [
        {"file": f.filename, "line": f.lineno, "function": f.name}
        for f in traceback.extract_tb(tb)[-limit:]
    ]


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Route the root logger to `stream` (stderr) as JSON lines. Called by `tbg serve` only."""
    # The JSON lines carry no process or thread fields, and collecting them for every record
    # (one access-log line per request) was a third of the access log's cost.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
