"""Fixtures of the reliability suite."""

from __future__ import annotations

import pytest

from proxy.config import UpstreamClient


@pytest.fixture(params=["lean", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest) -> UpstreamClient:
    """Both forwarding clients (`upstream_client: lean | aiohttp`) face the same faults."""
    client: UpstreamClient = request.param
    return client
