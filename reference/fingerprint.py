"""The reference upstream's `system_fingerprint`, in vLLM's shape: `tbgref-<version>-<mode>-<hash8>`.

vLLM's default (`--fingerprint-mode full`) is `vllm-<version>[-tp2…]-<hash8>`, the hash covering the
engine config (model, quantisation, attention backend, …). The reference does the same with what
decides its answers: the weights' `config.json` and the size of each weights file, the dtype, the
serving mode with its decode policy's parameters (thermostat temperature, noise sigma), the
batching policy, and the torch version. Computed once at start (a few small reads); the same model
served the same way has the same fingerprint on every start, and any of these changing gives a new
one — which is what the proxy's fingerprint tracking and its alert are about.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

import orjson


def _version() -> str:
    try:
        return importlib.metadata.version("tbg-proxy")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _fields(value: Any) -> Any:
    """A value's own parameters, as plain data (a dataclass' fields; else its class name)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return type(value).__name__


def system_fingerprint(
    folder: Path, dtype_name: str, mode: str, policy: Any, batching: Any, engine: str
) -> str:
    """`engine`: the numeric library's version (torch.__version__)."""
    weights = sorted(
        (p.name, p.stat().st_size) for p in folder.glob("*.safetensors") if p.is_file()
    )
    config = folder / "config.json"
    parts = {
        "config": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        "weights": weights,
        "dtype": dtype_name,
        "mode": mode,
        "policy": [getattr(policy, "name", None), _fields(policy)],
        "batching": _fields(batching),
        "engine": engine,
    }
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"tbgref-{_version()}-{mode}-{digest[:8]}"
