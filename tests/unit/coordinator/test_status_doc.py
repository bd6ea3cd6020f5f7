"""doc/status.md names every field of the coordinator's status replies (what --json prints)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from coordinator import status
from coordinator.agents import Agents
from coordinator.journal import Journal
from coordinator.leadership import LeaseView

from .conftest import IMAGE_ID

DOC = Path(__file__).resolve().parents[3] / "doc" / "status.md"
NOW = 1_700_000_000.0


def keys(data: Any) -> set[str]:
    """Every dict key in ``data``, except region names (the keys of a "regions" mapping)."""
    found: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            found.add(key)
            inner = value.values() if key == "regions" and isinstance(value, dict) else [value]
            for item in inner:
                found |= keys(item)
    elif isinstance(data, list):
        for item in data:
            found |= keys(item)
    return found


def documented() -> set[str]:
    """Names in the first column of the tables: `name`, `parent.name`, `regions.R.agents[]` each name every part."""
    cells = re.findall(r"^\| ([^|]+) \|", DOC.read_text(), re.M)
    names: set[str] = set()
    for cell in cells:
        for token in re.findall(r"`([^`]+)`", cell):
            names |= set(token.replace("[]", "").split("."))
    return names


def test_every_summary_and_image_field_is_documented(journal: Journal) -> None:
    agents = Agents(journal, 1.0, 10.0)
    agents.hello(b"r1", {"agent_id": "a1", "region": "RegionOne", "capacity": 2, "version": "0.1.0",
                         "in_flight": []}, NOW)
    summary = status.summary(journal, agents, ["RegionOne"], NOW - 60, NOW,
                             lease=LeaseView("active", "ctl-a-1f2e", "ctl-a-1f2e", 3, NOW + 15))
    journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
    journal.plan_event("e1", IMAGE_ID, [], {"RegionOne": "source refused"}, NOW)
    image = status.image(journal, IMAGE_ID, NOW)
    assert image["regions"] and summary["regions"]["RegionOne"]["agents"]
    missing = (keys(summary) | keys(image)) - documented()
    assert not missing, f"doc/status.md does not describe: {sorted(missing)}"
