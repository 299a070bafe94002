"""Reference servers (one torch thread each) for the measure/sweep tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from reference.launch import ReferenceProcess

os.environ["HF_HUB_OFFLINE"] = "1"
THREADS = ("--threads", "1")
THERMOSTAT_T = 0.3


def _need_reference() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def serial_ref() -> Iterator[ReferenceProcess]:
    _need_reference()
    with ReferenceProcess(mode="serial", extra_args=THREADS) as ref:
        yield ref


@pytest.fixture(scope="session")
def thermostat_ref() -> Iterator[ReferenceProcess]:
    _need_reference()
    with ReferenceProcess(mode="thermostat", temperature=THERMOSTAT_T, extra_args=THREADS) as ref:
        yield ref


@pytest.fixture(scope="session")
def batched_ref() -> Iterator[ReferenceProcess]:
    _need_reference()
    extra = (*THREADS, "--max-batch", "8", "--gather-ms", "50")
    with ReferenceProcess(mode="batched", extra_args=extra) as ref:
        yield ref
