"""Session-scoped reference servers (one per mode) and a fixed prompt set."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from reference.launch import ReferenceProcess
from tests.reference._runs import NOISE_SIGMA, THERMOSTAT_T, THREADS

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def serial_server() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(mode="serial", extra_args=THREADS) as ref:
        yield ref


@pytest.fixture(scope="session")
def batched_server() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(
        mode="batched", extra_args=(*THREADS, "--max-batch", "8", "--gather-ms", "50")
    ) as ref:
        yield ref


@pytest.fixture(scope="session")
def thermostat_server() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(mode="thermostat", temperature=THERMOSTAT_T, extra_args=THREADS) as ref:
        yield ref


@pytest.fixture(scope="session")
def noise_server() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(mode="noise", sigma=NOISE_SIGMA, extra_args=THREADS) as ref:
        yield ref
