"""The drop-reasons runbook covers exactly the reasons the proxy counts (`DROP_REASONS`), and the
runbooks name no other reason; a runbook that lists the reasons lists them all."""

from __future__ import annotations

import re
from pathlib import Path

from proxy.shadow.view import DROP_REASONS

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"


def test_the_drops_runbook_has_one_entry_per_drop_reason() -> None:
    text = (RUNBOOKS / "TbgShadowReplayDrops.md").read_text("utf-8")
    section = text.split("## What to do, by reason", 1)[1]
    listed = re.findall(r"^- `([a-z_]+)`", section, re.M)
    assert sorted(listed) == sorted(DROP_REASONS)


def test_runbooks_name_only_real_drop_reasons() -> None:
    for path in RUNBOOKS.glob("*.md"):
        text = path.read_text("utf-8")
        for match in re.finditer(r"`reason`: ([^)]*)\)", text):
            named = {w.strip(" `\n") for w in match.group(1).split(";")[0].split(",")}
            assert named <= set(DROP_REASONS), (path.name, named - set(DROP_REASONS))


def test_a_runbook_that_lists_the_reasons_lists_every_one() -> None:
    lists = 0
    for path in RUNBOOKS.glob("*.md"):
        for match in re.finditer(r"`reason`: ([^)]*)\)", path.read_text("utf-8")):
            named = {w.strip(" `\n") for w in match.group(1).split(";")[0].split(",")}
            assert named == set(DROP_REASONS), (path.name, set(DROP_REASONS) - named)
            lists += 1
    assert lists >= 1  # the starved-estimator runbook lists them
