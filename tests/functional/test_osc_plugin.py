"""``openstack image sync ...`` through the real ``openstack`` command, against keystone and CURVE.

One topology: keystone, a cascading and two regional glances behind keystonemiddleware,
the coordinator and one agent per region, every zmq socket under CURVE.  The plugin
reads a config made for it alone (``sync_server_host``/``port`` and a ``status`` key
in ``[curve]``, as doc/osc-plugin.md tells an operator to write), passed by
``$OS_GLANCE_SYNC_CONFIG`` or ``--sync-config``.  The user's side goes through the
openrc of keystone's demo user: ``openstack image create --file`` uploads, and the
plugin looks the image up by name with the same credentials.

The commands come from the package's entry points.  Until the package is reinstalled
with this setup.py (the venv's editable install predates the plugin), the test puts
a throwaway ``*.dist-info`` with setup.py's plugin entry points on PYTHONPATH; once
they are installed, the real ones are used.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tests.functional import helpers
from tests.harness.curve import CurveKeys
from tests.harness.glance import venv_bin
from tests.harness.procs import LOOPBACK
from tests.harness.topology import Topology, write_conf

REPO = Path(__file__).resolve().parents[2]
GROUPS = ("openstack.cli.extension", "openstack.glance_sync.v1")
SIZE = 3 * helpers.MIB


def plugin_entry_points() -> dict[str, list[str]]:
    """setup.py's entry points of the plugin's groups, as ``name = target`` lines."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
    return {group: points[group] for group in GROUPS}


def plugin_path(tmp: Path) -> str | None:
    """A directory with a dist-info of the plugin's entry points, or None when they are installed."""
    installed = {ep.name for ep in metadata.entry_points(group="openstack.glance_sync.v1")}
    if "image_sync_show" in installed:
        return None
    dist = tmp / "glance_sync_osc_dev-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: glance-sync-osc-dev\nVersion: 0.0\n")
    text = "".join(f"[{group}]\n" + "".join(f"{line}\n" for line in lines) + "\n"
                   for group, lines in plugin_entry_points().items())
    (dist / "entry_points.txt").write_text(text)
    return str(tmp)


class Site:
    def __init__(self, base: Path) -> None:
        self.topo = Topology(base, regions=2, sync_filter=True, cascaded_store=True, keystone=True)
        self.keys = CurveKeys(self.topo)
        self.extra_path = plugin_path(base / "plugin-path")
        self.status_conf = base / "etc" / "osc-status.conf"

    def start(self) -> Site:
        topo = self.topo
        # Keys first: glance-api's filter sends its events with a sender key of its own.
        for name, role, region in [("coordinator", None, None), ("ops", "status", None),
                                   ("glance-api", "sender", None)] + [
                                   (f"{r.lower()}-agent", "agent", r) for r in topo.region_names]:
            self.keys.make(name, role, region)
        topo.cascading.extra_sections["curve"] = {
            "enabled": True, "secret_key_file": self.keys.secret("glance-api"),
            "server_public_key_file": self.keys.dir / "coordinator.key"}
        topo.start()
        topo.write_service_conf(coordinator={"heartbeat_interval": 2}, agent={"heartbeat_interval": 2})
        topo.start_coordinator(self.keys.conf_for("coordinator"))
        for region in topo.region_names:
            topo.start_agent(region, f"{region.lower()}-agent", conf=self.keys.conf_for(f"{region.lower()}-agent"))
        # What the plugin's user holds: the coordinator's address and a status key, nothing else.
        write_conf(self.status_conf, {
            "DEFAULT": {"sync_server_host": LOOPBACK, "sync_server_port": topo.client_port},
            "curve": {"enabled": True, "secret_key_file": self.keys.secret("ops"),
                      "server_public_key_file": self.keys.dir / "coordinator.key"}})
        helpers.wait_until(lambda: all(r["Agents"] and r["Agents"][0]["online"] for r in self.sync("status")),
                           90, "every region's agent online, as the plugin shows it")
        return self

    def env(self, account: str | None = "demo", config: bool = True) -> dict[str, str]:
        env = self.topo.cli_env(account) if account else {
            k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        if config:
            env["OS_GLANCE_SYNC_CONFIG"] = str(self.status_conf)
        if self.extra_path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.extra_path, env.get("PYTHONPATH")) if p)
        return env

    def openstack(self, *argv: str, account: str | None = "demo", config: bool = True,
                  timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([venv_bin("openstack"), *argv], env=self.env(account, config), capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=timeout)

    def sync(self, *argv: str, account: str | None = "demo") -> Any:
        """``openstack image sync ARGV -f json``, parsed; AssertionError with stderr when it fails."""
        result = self.openstack("image", "sync", *argv, "-f", "json", account=account)
        assert result.returncode == 0, f"image sync {' '.join(argv)} failed ({result.returncode}):\n{result.stderr}"
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    running = Site(tmp_path_factory.mktemp("osc-plugin"))
    try:
        yield running.start()
    finally:
        running.topo.stop()


@pytest.fixture(scope="module")
def image(site: Site, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An image the demo user uploaded with ``openstack image create --file``."""
    path = tmp_path_factory.mktemp("img") / "osc.img"
    path.write_bytes(os.urandom(SIZE))
    name = f"osc-plugin-{uuid.uuid4().hex[:8]}"
    result = site.openstack("image", "create", "--file", str(path), "--disk-format", "raw", "--container-format",
                            "bare", name, "-f", "json")
    assert result.returncode == 0, result.stderr
    return {"id": json.loads(result.stdout)["id"], "name": name}


def test_wait_then_show_list_every_region_synced(site: Site, image: dict[str, Any]) -> None:
    waited = site.openstack("image", "sync", "wait", image["id"], "--timeout", "240", "-f", "json")
    assert waited.returncode == 0, waited.stderr
    # Not a terminal: the progress is plain lines on stderr, and the last line says why it ended.
    assert waited.stderr.splitlines()[-1].startswith(f"image {image['id']} is synced in ")
    assert {row["Region"]: row["State"] for row in json.loads(waited.stdout)} == dict.fromkeys(
        site.topo.region_names, "synced")
    rows = site.sync("show", image["id"], "--long")
    assert sorted(row["Region"] for row in rows) == site.topo.region_names
    for row in rows:
        assert (row["State"], row["Bytes Done"], row["Bytes Total"]) == ("synced", SIZE, SIZE)
        assert row["Copy Registered"] is True and row["Metadata Applied"] is True
        assert row["Last Error"] is None and row["Attempts"] >= 1


def test_show_finds_the_image_by_name_with_the_users_credentials(site: Site, image: dict[str, Any]) -> None:
    helpers.wait_states(site.topo, image["id"], "synced", timeout=240, conf=site.status_conf)
    by_name = site.sync("show", image["name"])
    assert {row["Region"]: row["State"] for row in by_name} == dict.fromkeys(site.topo.region_names, "synced")
    # Without credentials a name cannot be looked up; an id needs none.
    result = site.openstack("image", "sync", "show", image["name"], account=None)
    assert result.returncode == 1 and f"cannot look up the image named '{image['name']}'" in result.stderr
    assert site.sync("show", image["id"], account=None)


def test_status_needs_no_token_and_shows_each_region_with_its_agent(site: Site, image: dict[str, Any]) -> None:
    helpers.wait_states(site.topo, image["id"], "synced", timeout=240, conf=site.status_conf)
    rows = site.sync("status", account=None)
    assert sorted(row["Region"] for row in rows) == site.topo.region_names
    for row in rows:
        assert row["Synced"] >= 1 and row["Failed"] == 0
        assert [a["agent_id"] for a in row["Agents"]] == [f"{row['Region'].lower()}-agent"]
    table = site.openstack("image", "sync", "status", account=None)
    assert table.returncode == 0, table.stderr
    assert re.search(r"\|\s*RegionA\s*\|", table.stdout) and "regiona-agent (online" in table.stdout


def test_yaml_and_value_formats(site: Site, image: dict[str, Any]) -> None:
    helpers.wait_states(site.topo, image["id"], "synced", timeout=240, conf=site.status_conf)
    yaml_out = site.openstack("image", "sync", "show", image["id"], "-f", "yaml", account=None)
    assert yaml_out.returncode == 0 and "State: synced" in yaml_out.stdout
    value = site.openstack("image", "sync", "show", image["id"], "-f", "value", "-c", "Region", "-c", "State",
                           account=None)
    assert value.stdout.split() == [w for r in site.topo.region_names for w in (r, "synced")]


def test_a_key_without_the_status_role_is_refused(site: Site) -> None:
    """An agent's key may not read the status: the coordinator answers an error, the plugin one line."""
    agent_key = str(site.keys.secret("regiona-agent"))
    result = site.openstack("image", "sync", "status", "--sync-key-file", agent_key, account=None)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("coordinator error"), result.stderr
    assert "Traceback" not in result.stderr


def test_no_config_and_no_coordinator_is_one_line(site: Site) -> None:
    result = site.openstack("image", "sync", "status", "--sync-host", LOOPBACK, "--sync-port", "1",
                            "--answer-timeout", "1", account=None, config=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"no answer from coordinator at tcp://{LOOPBACK}:1 within 1 s"


def test_resync_runs_glance_sync_manage_with_the_coordinators_config(site: Site, image: dict[str, Any]) -> None:
    helpers.wait_states(site.topo, image["id"], "synced", timeout=240, conf=site.status_conf)
    conf = site.keys.conf_for("coordinator")
    result = site.openstack("image", "sync", "resync", image["id"], "--sync-config", str(conf), account=None)
    assert result.returncode == 0, result.stderr
    event = re.search(r"journaled as event (resync-[0-9a-f]{32})", result.stdout)
    assert event, result.stdout
    coordinator = next(s for s in site.topo.services if s.name == "coordinator")
    helpers.wait_until(lambda: event.group(1) in coordinator.log_path.read_text(errors="replace"), 60,
                       "the coordinator planning the resync event")
    # Synced regions are left alone.
    assert {row["State"] for row in site.sync("show", image["id"], account=None)} == {"synced"}
