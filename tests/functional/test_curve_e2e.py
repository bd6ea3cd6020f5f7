"""CurveZMQ end to end: every socket encrypted and authenticated, every key held to its role.

Keys come from ``glance-sync-manage keygen --role`` (tests/harness/curve.py): the
coordinator admits only the public keys of its allow-list and reads each one's role
from where it sits; every client pins the coordinator's key.  A user's upload through
``glance-sync-proxy`` (a sender key) syncs to RegionA, whose agent holds an agent key
of RegionA; RegionB has no agent.  The coordinator re-reads its allow-list only on
SIGHUP here (``reload_interval`` is an hour), so a revocation that takes effect shows
that SIGHUP works without a restart.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from glancesync import keys, protocol
from tests.functional import helpers
from tests.harness.curve import CurveKeys
from tests.harness.glance import admin_client, venv_bin
from tests.harness.procs import LOOPBACK, ServiceProcess, free_port, tcp_open
from tests.harness.topology import Topology, write_conf

REGION_A, REGION_B = "RegionA", "RegionB"
KEYS = (  # name, role, region
    ("coordinator", None, None), ("regiona-agent", "agent", REGION_A), ("regiona-rogue", "agent", REGION_A),
    ("regiona-twin", "agent", REGION_A), ("doomed", "agent", REGION_A), ("proxy", "sender", None),
    ("status", "status", None), ("reader", "status", None), ("intruder", None, None),
)


class CurveSite:
    """RegionA and RegionB, glance-sync-proxy in front of the cascading glance, CURVE everywhere."""

    def __init__(self, base: Path) -> None:
        self.topo = Topology(base, regions=[REGION_A, REGION_B], sync_filter=False, cascaded_store=True)
        self.keys = CurveKeys(self.topo)
        self.proxy_port = free_port()
        self.coordinator: ServiceProcess | None = None
        self.agent: ServiceProcess | None = None

    def start(self) -> CurveSite:
        self.topo.start()
        # Liveness of 3 x 2 s: a live session must not lapse on a busy test machine, or the
        # twin below would get in for a good reason.
        self.topo.write_service_conf(proxy={
            "listen_host": LOOPBACK, "listen_port": self.proxy_port,
            "upstream_url": self.topo.cascading.url, "spool_dir": self.topo.base_dir / "proxy-spool",
        }, coordinator={"heartbeat_interval": 2.0}, agent={"heartbeat_interval": 2.0})
        for name, role, region in KEYS:
            self.keys.make(name, role, region)
        self.coordinator = self.topo.start_coordinator(self.keys.conf_for("coordinator", reload_interval=3600))
        self.agent = self.start_agent(REGION_A, "regiona-agent", "regiona-agent")
        argv = [venv_bin("glance-sync-proxy"), "--config-file", str(self.keys.conf_for("proxy"))]
        proxy = ServiceProcess("glance-sync-proxy", argv, self.topo.log_dir / "proxy.log")
        self.topo.services.append(proxy)
        proxy.start()
        proxy.wait_ready(lambda: tcp_open(LOOPBACK, self.proxy_port), 30)
        helpers.wait_until(lambda: "regiona-agent" in self.online().get(REGION_A, set()), 30,
                           "the agent of RegionA online over CURVE")
        return self

    def start_agent(self, region: str, agent_id: str, key: str) -> ServiceProcess:
        """An agent process named after its key (two may share an agent id), with its own log."""
        # Each agent host reads its own glance_store.yaml (its region only, the SSH key).
        own = write_conf(self.topo.etc_dir / f"agent-{key}.conf", {
            "DEFAULT": {"glance_store_config": self.topo.agent_store_yaml(region)},
            "agent": {"region": region, "agent_id": agent_id}})
        argv = [venv_bin("glance-sync-agent"), "--config-file", str(self.keys.conf_for(key)), "--config-file", str(own)]
        agent = ServiceProcess(f"agent {key}", argv, self.topo.log_dir / f"agent-{key}.log", cwd=self.topo.base_dir)
        self.topo.services.append(agent)
        return agent.start()

    def client(self):
        return admin_client(f"http://{LOOPBACK}:{self.proxy_port}")

    def status(self, *args: str, key: str = "status") -> dict:
        return helpers.status(self.topo, *args, conf=self.keys.conf_for(key))

    def online(self) -> dict[str, set[str]]:
        return {name: {a["agent_id"] for a in region["agents"] if a["online"]}
                for name, region in self.status()["regions"].items()}

    def agents(self, region: str) -> list[dict]:
        return self.status()["regions"][region]["agents"]

    def coordinator_log(self) -> str:
        return self.topo.log_dir.joinpath("coordinator.log").read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CurveSite]:
    curve_site = CurveSite(tmp_path_factory.mktemp("curve"))
    try:
        yield curve_site.start()
    finally:
        curve_site.topo.stop()


def upload(site: CurveSite) -> str:
    image = helpers.upload_random(site.client(), 2 * helpers.MIB)
    return image.id


def test_upload_syncs_over_curve_and_waits_for_an_agent_of_region_b(site: CurveSite) -> None:
    image_id = upload(site)
    helpers.wait_states(site.topo, image_id, {REGION_A: "synced", REGION_B: "pending"}, timeout=120,
                        conf=site.keys.conf_for("status"))


def test_an_agent_key_of_region_a_cannot_take_region_b_tasks(site: CurveSite) -> None:
    image_id = upload(site)
    rogue = site.start_agent(REGION_B, "rogue", "regiona-rogue")
    try:
        helpers.wait_until(lambda: "forbidden" in rogue.log_tail(50), 30, "the rogue agent told its hello was refused")
        assert "ERROR" in rogue.log_tail(50) and rogue.running
        assert "agent/RegionA/regiona-rogue.key" in site.coordinator_log()
        helpers.wait_states(site.topo, image_id, {REGION_A: "synced", REGION_B: "pending"}, timeout=120,
                            conf=site.keys.conf_for("status"))
        assert site.agents(REGION_B) == []
        view = helpers.image_regions(site.topo, image_id, conf=site.keys.conf_for("status"))
        assert view[REGION_B]["agent_id"] in (None, "") and view[REGION_B]["attempts"] == 0
    finally:
        rogue.stop()


def test_a_status_key_cannot_send_an_event(site: CurveSite) -> None:
    image_id = str(uuid.uuid4())
    public, secret = keys.load_secret(str(site.keys.secret("status")))
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = keys.load_public(str(site.keys.dir / "coordinator.key"))
    try:
        sock.connect(f"tcp://{LOOPBACK}:{site.topo.client_port}")
        sock.send(protocol.encode("event", {"event_id": f"forged-{image_id}", "kind": "deleted",
                                            "image_id": image_id}))
        assert sock.poll(30_000), "no answer to the forged event"
        reply = protocol.decode(sock.recv())
    finally:
        sock.close()
        context.term()
    assert reply.type == "error" and reply.body["code"] == "forbidden"
    assert site.status("image", image_id)["known"] is False  # nothing journaled
    assert "status/status.key" in site.coordinator_log()


def test_a_revoked_key_is_refused_after_sighup_without_a_restart(site: CurveSite) -> None:
    assert site.coordinator is not None
    doomed = site.start_agent(REGION_A, "doomed", "doomed")
    try:
        helpers.wait_until(lambda: "doomed" in site.online().get(REGION_A, set()), 30, "the doomed agent online")
        assert site.status(key="reader")["regions"]
        pid = site.coordinator.pid
        assert site.keys.revoke("doomed") and site.keys.revoke("reader")
        site.coordinator.kill(signal.SIGHUP, group=False)
        # The open session is closed at once, and the agent's new connections are refused.
        helpers.wait_until(lambda: "doomed" not in site.online().get(REGION_A, set()), 30, "doomed offline")
        helpers.wait_until(lambda: "agent/RegionA/doomed.key was removed" in site.coordinator_log(), 30,
                           "the doomed agent's reconnect refused")
        result = helpers.run_status(site.topo, "--timeout", "2", conf=site.keys.conf_for("reader"))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "doomed" not in site.online().get(REGION_A, set())
        assert site.coordinator.running and site.coordinator.pid == pid  # no restart
    finally:
        doomed.stop()


def test_a_second_agent_with_a_taken_id_does_not_evict_the_live_one(site: CurveSite) -> None:
    assert site.agent is not None
    live_log = site.agent.log_path.read_text()
    twin = site.start_agent(REGION_A, "regiona-agent", "regiona-twin")
    try:
        helpers.wait_until(lambda: "agent_id_in_use" in twin.log_tail(50), 30, "the twin's hello refused")
        assert "ERROR" in twin.log_tail(50) and twin.running
        image_id = upload(site)
        helpers.wait_states(site.topo, image_id, {REGION_A: "synced"}, [REGION_A], timeout=120,
                            conf=site.keys.conf_for("status"))
        agents = site.agents(REGION_A)
        assert [a["online"] for a in agents if a["agent_id"] == "regiona-agent"] == [True]
        # The twin never held the session, and the live agent was never told to go.
        assert "welcomed" not in twin.log_path.read_text()
        assert "key agent/RegionA/regiona-twin.key" not in site.coordinator_log()
        assert "said disconnect" not in site.agent.log_path.read_text()[len(live_log):]
    finally:
        twin.stop()


def test_agent_with_a_key_not_on_the_allow_list_never_comes_online(site: CurveSite) -> None:
    intruder = site.start_agent(REGION_A, "intruder", "intruder")
    try:
        helpers.wait_until(lambda: "is not on the allow-list" in site.coordinator_log(), 30,
                           "the intruder's handshake refused")
        assert not any(a["agent_id"] == "intruder" for a in site.agents(REGION_A))
        assert intruder.running, "a refused agent keeps trying, it does not crash"
    finally:
        intruder.stop()


def test_status_without_keys_gets_no_answer(site: CurveSite) -> None:
    result = helpers.run_status(site.topo, "--timeout", "1")
    assert result.returncode == 2
    assert "no answer from coordinator" in result.stderr
    assert "Traceback" not in result.stderr
