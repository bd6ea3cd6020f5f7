"""The shipped Prometheus alert rules and Grafana dashboard name only series we export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentMetrics
from coordinator.leadership import LeaseView
from coordinator.metrics import CoordinatorMetrics, Snapshot
from glance_proxy import spoolstats

ROOT = Path(__file__).resolve().parents[3]
ALERTS = ROOT / "etc" / "prometheus" / "glance-sync-alerts.yaml"
DASHBOARD = ROOT / "etc" / "grafana" / "glance-sync.json"
DOC = ROOT / "doc" / "metrics.md"
SERIES = re.compile(r"\bglancesync_[a-z0-9_]+")


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """Every sample name the three producers write, with every optional series present."""
    coordinator = CoordinatorMetrics()
    coordinator.snapshot = Snapshot(
        taken_at=10.0, regions={"R": {"queued": 1, "in_flight": 0, "synced": 0, "failed": 0}},
        oldest_pending={"R": 1.0}, agents=(("R", "a", True, 9.0),), bytes_moved={"R": 5}, rate={"R": 1.0},
        failures={("R", "timeout"): 1}, events={"new": 1}, journal_bytes=100, journal_rows={"events": 1},
        last_pass=(5.0, 1.0, True))
    coordinator.pair = True  # the lease's series too
    coordinator.leadership = type("Pair", (), {"view": LeaseView("active", "a", "a", 1, 20.0)})()
    agent = AgentMetrics("R", "a")
    agent.failures["timeout"] += 1
    agent.tick(0.0, type("S", (), {"attempts": {}, "capacity": 1, "results": {}, "welcomed": True,
                                    "liveness": type("L", (), {"last_heard": 0.0})()})())
    textfile = tmp_path_factory.mktemp("prom") / "sender.prom"
    spoolstats.write(str(textfile), textfile.parent / "spool", 0.0)
    names = sample_names(generate_latest(coordinator.registry()).decode())
    names |= sample_names(generate_latest(agent.registry()).decode())
    return names | sample_names(textfile.read_text())


def rules() -> list[dict]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_every_alert_is_complete_and_names_only_exported_series(exported: set[str]) -> None:
    assert rules(), "no rules"
    for rule in rules():
        assert rule["alert"].startswith("GlanceSync") and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule.get("for")
        named = set(SERIES.findall(rule["expr"]))
        assert named, f"{rule['alert']} names none of our series"
        assert named <= exported, f"{rule['alert']}: {named - exported} not exported"


def test_every_dashboard_panel_names_only_exported_series(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    for expr in exprs:
        named = set(SERIES.findall(expr))
        assert named and named <= exported, f"{expr}: {named - exported} not exported"


def test_the_doc_lists_every_exported_series(exported: set[str]) -> None:
    text = DOC.read_text()
    families = {re.sub(r"_(total|created)$", "", name) for name in exported}
    missing = sorted(name for name in families if name not in text)
    assert not missing, f"doc/metrics.md does not list {missing}"
