"""One whole sync with the coordinator's journal on a real PostgreSQL, and on a real MariaDB.

The shared topology's glances and sshd, our real coordinator and agents as processes,
and ``[database] connection`` naming a database on a server that
tests/harness/sqlserver.py started: an upload to the cascading glance makes an event
(our filter), the coordinator journals and plans it on the server, the agents copy,
and each region's glance ends up with the same bytes.  The shared coordinator and
agents are stopped for the test; the ``sync`` fixture starts them again for the next.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from coordinator.journal import make_engine
from coordinator.schema import events, image_regions
from tests.functional import helpers
from tests.harness.sqlserver import SqlServer
from tests.harness.topology import Topology


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_an_upload_syncs_to_every_region_with_the_journal_on_a_server(
        topology: Topology, sql_servers: dict[str, SqlServer], tmp_path: Path, kind: str) -> None:
    url = sql_servers[kind].database(f"sync_{kind}")  # empty: start_coordinator runs db_sync
    conf = topology.write_service_conf(tmp_path / "glance-sync.conf", database={"connection": url},
                                       # Only our upload's event: no pass over earlier tests' images.
                                       coordinator={"reconcile_interval": 0})
    topology.stop_services()
    try:
        topology.start_coordinator(conf=conf)
        for region in topology.region_names:
            topology.start_agent(region, f"{region.lower()}-{kind}", conf=conf)
        image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
        view = helpers.wait_states(topology, image.id, "synced", conf=conf, timeout=180)
    finally:
        topology.stop_services()
    assert {view[r]["agent_id"] for r in topology.region_names} == {
        f"{r.lower()}-{kind}" for r in topology.region_names}
    for region, server in topology.cascaded.items():
        copy = server.client().images.get(image.id)
        assert (copy["status"], copy["checksum"], copy["os_hash_value"]) == ("active", image.md5, image.sha512), region
    # The journal that drove it is the server's.
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            states = dict(conn.execute(sa.select(image_regions.c.region, image_regions.c.state)
                                       .where(image_regions.c.image_id == image.id)).all())
            planned = conn.execute(sa.select(events.c.planned).where(events.c.image_id == image.id)).scalars().all()
    finally:
        engine.dispose()
    assert states == {r: "synced" for r in topology.region_names}
    assert planned and all(planned)
