"""`shadow.history`: how much of the published estimate the proxy remembers, and where it keeps it
across restarts (schema and the frozen value; the recorder is proxy/shadow/history.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, field_validator

from proxy.validation import Int, Number, Section, Text

DEFAULT_POINTS = 2880  # 12 hours at the default interval
DEFAULT_INTERVAL = 15.0


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    points: int = DEFAULT_POINTS
    interval_seconds: float = DEFAULT_INTERVAL
    path: str | None = None


class HistorySchema(Section):
    """`shadow.history`: the bounded history behind `GET /tbg/history` and the live page `/ui`."""

    points: Annotated[
        Int,
        Field(ge=2, le=100_000, description="points kept (the oldest goes first); each holds "
              "every model's estimate and the accounting"),
    ] = DEFAULT_POINTS  # fmt: skip
    interval_seconds: Annotated[
        Number, Field(ge=1.0, le=3600.0, description="one point every this many seconds")
    ] = DEFAULT_INTERVAL
    path: Text | None = Field(
        None,
        description="JSON-lines file that keeps the history across restarts (one file per "
        "replica; its directory must exist); `null`: in memory only",
    )

    @field_validator("path")
    @classmethod
    def _directory_is_writable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        directory = os.path.dirname(os.path.abspath(value))
        if not os.path.isdir(directory):
            raise ValueError(f"directory {directory} does not exist")
        if not os.access(directory, os.W_OK):
            raise ValueError(f"directory {directory} is not writable")
        if os.path.isdir(value):
            raise ValueError(f"{value} is a directory")
        return value

    def to_config(self) -> HistoryConfig:
        return HistoryConfig(self.points, self.interval_seconds, self.path)
