"""An active/passive coordinator pair on a real PostgreSQL: kill -9 the active one mid-sync.

Two real ``glance-sync-coordinator`` processes with ``[coordinator] pair = True`` share
one journal on the PostgreSQL of tests/harness/sqlserver.py, each on ports of its own.
The agents list both agent sockets (``[agent] coordinators``) and the cascading
glance-api's filter both client sockets (``sync_servers``).  A batch of uploads is
syncing when the active coordinator gets SIGKILL; the passive one must take the
lease within one lease (plus one renew interval), bind its sockets, and finish every
copy: every image synced in every region, one ``cascaded://`` location per region,
each regional copy the cascading bytes, and images uploaded after the kill reach it
through the filter's failover.  Operators see which one acts: ``/metrics`` of each
(``glancesync_coordinator_leader``, the lease's generation) and ``glance-sync-status``,
which only the active one answers (its role, the lease's holder and generation).
The reconciler is off, so nothing but the journal
and the senders' outboxes can make up for a lost event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from coordinator.journal import make_engine
from coordinator.schema import image_regions, leader
from tests.functional import helpers
from tests.functional.test_metrics import sample, scrape
from tests.harness.glance import venv_bin
from tests.harness.procs import LOOPBACK, ServiceProcess, free_port, tcp_open
from tests.harness.sqlserver import SqlServer
from tests.harness.topology import Topology

LEASE, RENEW = 10.0, 2.0
IMAGES_BEFORE, IMAGES_AFTER = 6, 2
# Generous: the 2-core machine runs other jobs; the lease arithmetic itself is exact.
SLACK = 20.0


class Pair:
    """The two coordinators' configs, ports and processes."""

    def __init__(self, topology: Topology, url: str, etc: Path) -> None:
        self.topology, self.url = topology, url
        self.ports = {"a": (topology.client_port, topology.agent_port), "b": (free_port(), free_port())}
        clients = ",".join(f"{LOOPBACK}:{client}" for client, _ in self.ports.values())
        agents = ",".join(f"{LOOPBACK}:{agent}" for _, agent in self.ports.values())
        self.sync_servers = clients
        self.metrics = {name: free_port() for name in self.ports}
        self.conf = {
            name: topology.write_service_conf(
                etc / f"glance-sync-{name}.conf", database={"connection": url},
                DEFAULT={"sync_server_port": client, "sync_servers": clients},
                coordinator={"agent_port": agent, "reconcile_interval": 0, "pair": True,
                             "leader_lease_time": LEASE, "leader_renew_interval": RENEW,
                             "metrics_port": self.metrics[name]},
                agent={"coordinators": agents})
            for name, (client, agent) in self.ports.items()
        }
        self.procs: dict[str, ServiceProcess] = {}

    def start(self, name: str) -> ServiceProcess:
        argv = [venv_bin("glance-sync-coordinator"), "--config-file", str(self.conf[name])]
        proc = ServiceProcess(f"coordinator {name}", argv, self.topology.log_dir / f"coordinator-{name}.log",
                              cwd=self.topology.base_dir)
        self.topology.services.append(proc)
        self.procs[name] = proc.start()
        return proc

    def bound(self, name: str) -> bool:
        return all(tcp_open(LOOPBACK, port) for port in self.ports[name])

    def lease(self) -> tuple[str | None, float, int]:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(leader.c.holder, leader.c.expires, leader.c.generation)).one()
        return row.holder, row.expires, row.generation

    def states(self, image_ids: list[str]) -> dict[tuple[str, str], str]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(image_regions.c.image_id, image_regions.c.region, image_regions.c.state)
                                .where(image_regions.c.image_id.in_(image_ids))).all()
        return {(r.image_id, r.region): r.state for r in rows}

    def __enter__(self) -> Pair:
        self._engine = make_engine(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self._engine.dispose()


@pytest.fixture
def filter_to_both(topology: Topology) -> Iterator[None]:
    """Gives the shared cascading glance-api its own config back after the test (the test sets ``sync_servers``)."""
    yield
    topology.cascading.extra_sections.pop("DEFAULT", None)
    topology.cascading.restart()


@pytest.fixture
def pair_url(sql_servers: dict[str, SqlServer]) -> str:
    return sql_servers["postgresql"].database("coordinator_pair")


def test_the_passive_coordinator_takes_over_when_the_active_one_is_killed_mid_sync(
        topology: Topology, pair_url: str, filter_to_both: None, tmp_path: Path) -> None:
    topology.stop_services()
    with Pair(topology, pair_url, tmp_path) as pair:
        topology.run_manage("db_sync", conf=pair.conf["a"])
        topology.cascading.extra_sections["DEFAULT"] = {"sync_servers": pair.sync_servers}
        topology.cascading.restart()
        try:
            _run(topology, pair)
        finally:
            topology.stop_services()


def _run(topology: Topology, pair: Pair) -> None:
    a = pair.start("a")
    a.wait_ready(lambda: pair.bound("a") and pair.lease()[2] == 1, timeout=60)
    holder_a = pair.lease()[0]
    b = pair.start("b")
    b.wait_ready(lambda: "passive: the leader lease is held by" in b.log_tail(200), timeout=60)
    assert not pair.bound("b") and not tcp_open(LOOPBACK, pair.ports["b"][0])  # the passive one binds nothing
    passive, active = scrape(pair.metrics["b"]), scrape(pair.metrics["a"])
    assert sample(passive, "glancesync_coordinator_leader") == 0 and sample(active, "glancesync_coordinator_leader") == 1
    assert sample(passive, "glancesync_coordinator_leader_generation") == 1  # the holder's, as the passive read it
    for region in topology.region_names:
        topology.start_agent(region, f"{region.lower()}-pair", conf=pair.conf["a"])
    client = topology.cascading.client()
    before = [helpers.upload_random(client, 4 * helpers.MIB) for _ in range(IMAGES_BEFORE)]
    ids = [image.id for image in before]
    regions = topology.region_names
    # Mid-sync: some copy registered, others still to do.
    helpers.wait_until(lambda: "synced" in pair.states(ids).values(), 180, "a first synced copy")
    a.kill()  # SIGKILL: no release of the lease, no goodbye to anyone
    killed_at = time.time()
    _holder, expires_at_kill, _generation = pair.lease()
    at_kill = pair.states(ids)
    assert sum(at_kill.get((i, r)) != "synced" for i in ids for r in regions) > 0, at_kill

    # The passive one takes the lease once it lapsed, within one renew interval of that.
    helpers.wait_until(lambda: pair.lease()[2] == 2, LEASE + RENEW + SLACK, "the takeover")
    holder_b, expires_b, _ = pair.lease()
    taken_at = expires_b - LEASE
    assert holder_b != holder_a and taken_at >= expires_at_kill
    assert taken_at - expires_at_kill <= RENEW + SLACK and taken_at - killed_at <= LEASE + RENEW + SLACK
    b.wait_ready(lambda: pair.bound("b"), timeout=60)
    took = scrape(pair.metrics["b"])
    assert sample(took, "glancesync_coordinator_leader") == 1
    assert sample(took, "glancesync_coordinator_leader_generation") == 2
    coordinator = helpers.status(topology, conf=pair.conf["b"])["coordinator"]  # a is dead: b answers
    assert coordinator["role"] == "active" and coordinator["lease"]["holder"] == holder_b
    assert coordinator["lease"]["generation"] == 2

    # Uploads after the kill: the filter's events fail over to b.
    after = [helpers.upload_random(client, helpers.MIB) for _ in range(IMAGES_AFTER)]
    everything = [*before, *after]
    ids = [image.id for image in everything]
    wanted = {(i, r): "synced" for i in ids for r in regions}
    helpers.wait_until(lambda: pair.states(ids) == wanted, 300, "every image synced in every region")
    assert "leader lease taken by" in b.log_tail(400) and b.running

    # Nothing duplicated, nothing lost: one location per region, each copy the cascading bytes.
    for image in everything:
        record = client.images.get(image.id)
        urls = sorted(loc["url"] for loc in record.get("locations", []) if loc["url"].startswith("cascaded://"))
        assert urls == sorted(f"cascaded://{r}/{image.id}" for r in regions), image.id
    for region, server in topology.cascaded.items():
        copies = {img["id"]: img for img in server.client().images.list() if img["id"] in set(ids)}
        assert set(copies) == set(ids), region
        for image in everything:
            copy = copies[image.id]
            assert (copy["status"], copy["size"], copy["checksum"], copy["os_hash_value"]) == (
                "active", image.size, image.md5, image.sha512), (region, image.id)
