"""The fleet sections of an upstream's config: endpoints from DNS, and models from /v1/models.

`upstreams[i].discovery` turns one base_url into the set of addresses its host name resolves to
(a Kubernetes headless Service: one A/AAAA record per ready pod); `upstreams[i].model_discovery`
routes and labels the models an upstream lists. Both are off by default: a static base_url
behaves exactly as without them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from proxy.validation import Int, Number, Section

_Seconds = Annotated[Number, Field(gt=0.0)]


class Discovery(Section):
    """`upstreams[i].discovery`: forward to every address of base_url's host, not the name."""

    dns: bool = Field(
        False,
        description="resolve base_url's host (A/AAAA) and forward to each address directly: "
        "least in flight, ties round-robin; Host and TLS SNI stay base_url's",
    )
    refresh_seconds: _Seconds = Field(10.0, description="how often the name is resolved again")
    down_seconds: _Seconds = Field(
        10.0, description="an address that refused a connection is skipped this long"
    )
    max_pod_labels: Annotated[Int, Field(ge=0, le=256)] = Field(
        16,
        description="addresses with their own `pod` label on /metrics; more are pooled as "
        "`other` (series budget, docs/deploy.md)",
    )


class ModelDiscovery(Section):
    """`upstreams[i].model_discovery`: route and label the models the upstream lists."""

    enabled: bool = Field(
        False,
        description="poll `GET {base_url}/models`; each model listed gets its own `model_name` "
        "label and routes here; a model pinned by any upstream's `models:` keeps its upstream",
    )
    refresh_seconds: _Seconds = Field(60.0, description="how often the listing is read again")
    max_models: Annotated[Int, Field(ge=1, le=256)] = Field(
        16,
        description="models taken per upstream (in the order listed); the rest stay `other`",
    )
