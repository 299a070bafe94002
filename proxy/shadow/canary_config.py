"""`shadow.canary`: per model, another configured upstream that a share of the sampled trials is
replayed against instead of the upstream that served the primary (the live canary, docs/canary.md).

The schema is the runtime value; `check_canaries` is the cross-section rule (the upstream exists, is
not the one serving the model) that `proxy.schema.Config` runs with the whole file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import Field
from pydantic_core import PydanticCustomError

from proxy.validation import Number, Section, Text, field_error


class CanaryPolicy(Section):
    """`shadow.canary.<model>`: where that model's canary trials are replayed, and how many."""

    upstream: Text = Field(
        description="name of a configured upstream that receives the canary replays (not the "
        "one that serves the model; give it no `models`, or others)"
    )
    share: Annotated[
        Number,
        Field(
            ge=0.0,
            le=1.0,
            description="share of the model's sampled trials replayed on the canary instead of the "
            "fleet (1: all, and the fleet's own T_bg gets no trials)",
        ),
    ] = 0.5


def check_canaries(
    canaries: Mapping[str, CanaryPolicy], upstreams: set[str], served: Mapping[str, str]
) -> PydanticCustomError | None:
    """The first error of `shadow.canary` against the configured upstreams (None: all good).
    `served`: model -> the upstream that lists it (empty when no upstream lists models)."""
    for model, policy in canaries.items():
        where = f"shadow.canary.{model}"
        if served and model not in served:
            return field_error(
                where,
                f"no upstream serves model {model!r} (configured: {', '.join(sorted(served))})",
            )
        if policy.upstream not in upstreams:
            return field_error(
                f"{where}.upstream",
                f"no upstream named {policy.upstream!r} (configured: "
                f"{', '.join(sorted(upstreams))})",
            )
        if served.get(model) == policy.upstream:
            return field_error(
                f"{where}.upstream",
                f"{policy.upstream!r} already serves {model!r}: a canary is another upstream",
            )
    return None
