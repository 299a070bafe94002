"""`shadow.history`: how much of the published estimate the proxy remembers, and where it keeps it
across restarts (the recorder is proxy/shadow/history.py). The schema is the runtime value."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field, field_validator

from proxy.validation import Int, Number, Section, Text


class HistoryConfig(Section):
    """`shadow.history`: the bounded history behind `GET /tbg/history` and the live page `/ui`."""

    points: Annotated[
        Int,
        Field(
            ge=2,
            le=100_000,
            description="points kept (the oldest goes first); each holds every model's estimate "
            "and the accounting",
        ),
    ] = 2880  # 12 hours at the default interval
    interval_seconds: Annotated[
        Number, Field(ge=1.0, le=3600.0, description="one point every this many seconds")
    ] = 15.0
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
