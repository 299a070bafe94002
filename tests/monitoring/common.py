"""Shared helpers for the monitoring tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES_DIR = PROM_DIR / "rules"
RUNBOOKS = ROOT / "docs" / "runbooks"


def rules_gen() -> ModuleType:
    """deploy/prometheus/rules_gen.py (deploy/ is not a Python package)."""
    name = "tbg_rules_gen"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROM_DIR / "rules_gen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
