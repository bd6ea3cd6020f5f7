"""CurveZMQ end to end: a site whose every socket is encrypted and authenticated.

Keys come from ``glance-sync-manage keygen``; the coordinator admits only the public
keys in its allow-list, and every client pins the coordinator's key.  A user's upload
through ``glance-sync-proxy`` syncs to the region; an agent whose key is not on the
list never comes online, and the status tool without keys gets no answer.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional import helpers
from tests.functional.test_proxy_e2e import ProxiedSite
from tests.harness.glance import venv_bin
from tests.harness.procs import LOOPBACK, ServiceProcess, tcp_open
from tests.harness.topology import write_conf

REGION = "RegionP"


class CurveSite(ProxiedSite):
    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.keys = self.topo.base_dir / "keys"
        self.allowed = self.keys / "allowed"

    def keygen(self, name: str, allow: bool) -> None:
        self.topo.run_manage("keygen", "--dir", str(self.keys), "--name", name, conf=self.topo.service_conf)
        if allow:
            self.allowed.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.keys / f"{name}.key", self.allowed / f"{name}.key")

    def conf_for(self, name: str) -> Path:
        """The shared config plus this service's own [curve] section."""
        curve = {"enabled": True, "secret_key_file": self.keys / f"{name}.key_secret",
                 "server_public_key_file": self.keys / "coordinator.key"}
        if name == "coordinator":
            curve["allowed_clients_dir"] = self.allowed
        return write_conf(self.topo.etc_dir / f"curve-{name}.conf", {"curve": curve})

    def merged(self, name: str) -> Path:
        base = self.topo.service_conf.read_text()
        path = self.topo.etc_dir / f"{name}-full.conf"
        path.write_text(base + "\n" + self.conf_for(name).read_text())
        return path

    def start(self) -> CurveSite:
        self.topo.start()
        self.topo.write_service_conf(proxy={
            "listen_host": LOOPBACK, "listen_port": self.proxy_port,
            "upstream_url": self.topo.cascading.url, "spool_dir": self.topo.base_dir / "proxy-spool",
        })
        for name, allow in (("coordinator", False), ("regionp-agent", True), ("proxy", True),
                            ("status", True), ("intruder", False)):
            self.keygen(name, allow)
        self.topo.start_coordinator(self.merged("coordinator"))
        self.topo.start_agent(REGION, "regionp-agent", conf=self.merged("regionp-agent"))
        argv = [venv_bin("glance-sync-proxy"), "--config-file", str(self.merged("proxy"))]
        self.proxy = ServiceProcess("glance-sync-proxy", argv, self.topo.log_dir / "proxy.log")
        self.topo.services.append(self.proxy)
        self.proxy.start()
        self.proxy.wait_ready(lambda: tcp_open(LOOPBACK, self.proxy_port), 30)
        return self

    def status(self, *args: str) -> dict:
        return helpers.status(self.topo, *args, conf=self.merged("status"))


@pytest.fixture(scope="module")
def curve_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CurveSite]:
    site = CurveSite(tmp_path_factory.mktemp("curve"))
    try:
        yield site.start()
    finally:
        site.topo.stop()


def test_upload_syncs_over_curve(curve_site: CurveSite) -> None:
    helpers.wait_until(
        lambda: any(a["agent_id"] == "regionp-agent" and a["online"]
                    for a in curve_site.status()["regions"][REGION]["agents"]),
        30, "the agent online over CURVE",
    )
    image = helpers.upload_random(curve_site.client(), 2 * helpers.MIB)
    helpers.wait_states(curve_site.topo, image.id, {REGION: "synced"}, [REGION], timeout=120,
                        conf=curve_site.merged("status"))


def test_agent_with_a_key_not_on_the_allow_list_never_comes_online(curve_site: CurveSite) -> None:
    intruder = curve_site.topo.start_agent(REGION, "intruder", conf=curve_site.merged("intruder"))
    try:
        with pytest.raises(AssertionError):
            helpers.wait_until(
                lambda: any(a["agent_id"] == "intruder" for a in curve_site.status()["regions"][REGION]["agents"]),
                6, "the intruder online",
            )
        assert intruder.running, "a refused agent keeps trying, it does not crash"
    finally:
        intruder.stop()


def test_status_without_keys_gets_no_answer(curve_site: CurveSite) -> None:
    result = helpers.run_status(curve_site.topo, "--timeout", "1")
    assert result.returncode == 2
    assert "no answer from coordinator" in result.stderr
    assert "Traceback" not in result.stderr
