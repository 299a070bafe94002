"""Every PromQL expression tbg-proxy's monitoring uses, in one place, so tests can iterate over them:
the panel queries of the generated dashboards (as committed JSON) and the expressions of the rule files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"


@dataclass(frozen=True)
class Expression:
    source: str  # "dashboard" | "record" | "alert" | "variable"
    where: str  # dashboard file / panel title / refId, or rule name
    expr: str


def dashboard_files(directory: Path = DASHBOARD_DIR) -> list[Path]:
    return sorted(directory.glob("*.json"))


def rule_files(directory: Path = RULES_DIR) -> list[Path]:
    return sorted(directory.glob("*.rules.yml"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return out


def dashboard_expressions(directory: Path = DASHBOARD_DIR) -> list[Expression]:
    found: list[Expression] = []
    for path in dashboard_files(directory):
        dash = json.loads(path.read_text(encoding="utf-8"))
        for p in panels(dash):
            for t in p.get("targets", []):
                found.append(
                    Expression("dashboard", f"{path.name} / {p['title']} / {t['refId']}", t["expr"])
                )
    return found


def variable_queries(directory: Path = DASHBOARD_DIR) -> list[Expression]:
    found: list[Expression] = []
    for path in dashboard_files(directory):
        dash = json.loads(path.read_text(encoding="utf-8"))
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                found.append(Expression("variable", f"{path.name} / ${v['name']}", q))
    return found


def rule_expressions(directory: Path = RULES_DIR) -> list[Expression]:
    found: list[Expression] = []
    for path in rule_files(directory):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    found.append(Expression("record", rule["record"], rule["expr"]))
                else:
                    found.append(Expression("alert", rule["alert"], rule["expr"]))
    return found


def all_expressions() -> list[Expression]:
    return dashboard_expressions() + rule_expressions()
