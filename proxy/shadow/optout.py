"""The per-request replay header: `X-TBG-Replay: never` or `always`.

A client marks a request `never` when replaying it would do harm (a side effect behind a tool call,
a prompt that must not be sent twice) and `always` when it wants this request measured whatever the
sample rate. `always` still obeys the budgets (replays and tokens per minute, the queue): a header a
client sets must not be able to multiply the load on the upstream. The header never reaches an
upstream (proxy/upstreams.py drops it from every forwarded request; replays carry only auth).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

HEADER = "X-TBG-Replay"
HEADER_LOWER = HEADER.lower()

ReplayChoice = Literal["never", "always"] | None

# Any other value (a typo, an empty value) leaves the request to the sample rate: a header meant
# for the measurement must never turn a client's request into an error.
_VALUES: Mapping[str, ReplayChoice] = {"never": "never", "always": "always"}


def replay_choice(headers: Mapping[str, str]) -> ReplayChoice:
    """The client's choice for this request, from its headers (case-insensitive name and value)."""
    value = headers.get(HEADER) or headers.get(HEADER_LOWER)  # a plain dict is case-sensitive
    if value is None:
        return None
    return _VALUES.get(value.strip().lower())
