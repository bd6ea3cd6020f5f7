"""glance_proxy end to end: a plain glanceclient user drives the whole sync.

Through the paste filter inside the cascading glance-api, through the standalone
``glance-sync-proxy`` in front of an unmodified glance-api, and with the coordinator
down (events wait in the on-disk outbox and sync once it is back).  Also the loop
guard: a client's ``X-Glance-Sync-Internal`` header switches no event off, while the
coordinator's own signed location registrations make none.
"""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from glancesync.protocol import INTERNAL_REQUEST_HEADER
from tests.functional import helpers
from tests.functional.services import SyncServices
from tests.harness.glance import admin_client, venv_bin
from tests.harness.procs import LOOPBACK, ServiceProcess, free_port, tcp_open
from tests.harness.topology import Topology


def _spooled(topology: Topology) -> list[Path]:
    return list(topology.spool_dir.rglob("*.evt"))  # events only: .usage and the lock-held directories stay


def _sent_events(topology: Topology, image_id: str) -> list[str]:
    """Kinds of the journaled events that glance_proxy sent for the image (not reconciler or resync ones)."""
    with closing(sqlite3.connect(f"file:{topology.journal_path}?mode=ro", uri=True, timeout=10)) as db:
        rows = db.execute("SELECT event_id, kind FROM events WHERE image_id = ? ORDER BY received_at",
                          (image_id,)).fetchall()
    return [kind for event_id, kind in rows if not event_id.startswith(("reconcile-", "resync-"))]


def _check_loop_guard(topology: Topology, client_url: str, owner_client) -> None:
    """A client's bare header still makes events; the coordinator's registrations make none."""
    sneaky = admin_client(client_url, **{INTERNAL_REQUEST_HEADER: "1"})
    image = helpers.upload_random(sneaky, helpers.MIB)
    helpers.wait_until(lambda: "uploaded" in _sent_events(topology, image.id), 60,
                       "the upload's own event despite the client's loop-guard header")
    helpers.wait_states(topology, image.id, "synced", timeout=120)
    # The coordinator registered one location per region by now. Its events, had it
    # made any, would be journaled before this later change's event.
    owner_client.images.update(image.id, name="after-sync")
    helpers.wait_until(lambda: "updated" in _sent_events(topology, image.id), 60, "the rename's event")
    kinds = _sent_events(topology, image.id)
    assert "locations_changed" not in kinds, kinds
    locations = [loc["url"] for loc in owner_client.images.get(image.id)["locations"]]
    assert all(f"cascaded://{region}/{image.id}" in locations for region in topology.region_names), locations


def test_loop_guard_through_the_filter(topology: Topology, sync: SyncServices) -> None:
    _check_loop_guard(topology, topology.cascading.url, topology.cascading.client())


def test_create_and_upload_alone_sync_every_region(topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = client.images.create(name="plain-user", disk_format="raw", container_format="bare",
                                 os_distro="cirros")
    data = os.urandom(3 * helpers.MIB)
    client.images.upload(image["id"], io.BytesIO(data), image_size=len(data))
    helpers.wait_states(topology, image["id"], "synced")
    for server in topology.cascaded.values():
        copy = server.client().images.get(image["id"])
        assert copy["os_distro"] == "cirros" and copy["name"] == "plain-user"


def test_interoperable_import_syncs_once_active(topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = client.images.create(name="imported", disk_format="raw", container_format="bare")
    data = os.urandom(2 * helpers.MIB)
    client.images.stage(image["id"], io.BytesIO(data), image_size=len(data))
    client.images.image_import(image["id"], method="glance-direct")
    helpers.wait_states(topology, image["id"], "synced", timeout=120)


def test_uploads_succeed_while_coordinator_is_down_and_sync_once_back(
    topology: Topology, sync: SyncServices
) -> None:
    assert sync.coordinator is not None
    sync.coordinator.stop()
    client = topology.cascading.client()
    images = [helpers.upload_random(client, helpers.MIB) for _ in range(3)]
    for image in images:
        assert client.images.get(image.id)["status"] == "active"
    helpers.wait_until(lambda: len(_spooled(topology)) >= 3, 30, "events in the on-disk outbox")
    sync.ensure()
    for image in images:
        helpers.wait_states(topology, image.id, "synced", timeout=120)
    helpers.wait_until(lambda: not _spooled(topology), 30, "the outbox drained")


class ProxiedSite:
    """An unmodified glance-api with glance-sync-proxy in front and its own coordinator and agent."""

    def __init__(self, base: Path) -> None:
        self.topo = Topology(base, regions=["RegionP"], sync_filter=False, cascaded_store=True)
        self.proxy_port = free_port()
        self.proxy: ServiceProcess | None = None

    def start(self) -> ProxiedSite:
        self.topo.start()
        # The coordinator, too, reaches glance through the proxy (as it would through
        # a keystone catalog that names the proxy): its signed calls make no event.
        conf = self.topo.write_service_conf(DEFAULT={"cascading_endpoint_url": self.url}, proxy={
            "listen_host": LOOPBACK, "listen_port": self.proxy_port,
            "upstream_url": self.topo.cascading.url, "spool_dir": self.topo.base_dir / "proxy-spool",
        })
        argv = [venv_bin("glance-sync-proxy"), "--config-file", str(conf)]
        self.proxy = ServiceProcess("glance-sync-proxy", argv, self.topo.log_dir / "proxy.log")
        self.topo.services.append(self.proxy)
        self.proxy.start()
        self.proxy.wait_ready(lambda: tcp_open(LOOPBACK, self.proxy_port), 30)
        self.topo.start_coordinator(conf)
        self.topo.start_agent("RegionP", "regionp-main", conf=conf)
        return self

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.proxy_port}"

    def client(self):
        return admin_client(self.url)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedSite]:
    site = ProxiedSite(tmp_path_factory.mktemp("proxied"))
    try:
        yield site.start()
    finally:
        site.topo.stop()


def test_standalone_proxy_passes_glance_through_and_drives_sync(proxied: ProxiedSite) -> None:
    client = proxied.client()
    image = helpers.upload_random(client, 8 * helpers.MIB)
    record = client.images.get(image.id)
    assert record["checksum"] == image.md5 and record["size"] == image.size
    downloaded = b"".join(client.images.data(image.id))
    assert len(downloaded) == image.size
    helpers.wait_states(proxied.topo, image.id, {"RegionP": "synced"}, ["RegionP"], timeout=120)
    copy = proxied.topo.cascaded["RegionP"].client().images.get(image.id)
    assert copy["os_hash_value"] == image.sha512


def test_standalone_proxy_passes_errors_through(proxied: ProxiedSite) -> None:
    from glanceclient import exc as glance_exc

    with pytest.raises(glance_exc.HTTPNotFound):
        proxied.client().images.get("00000000-0000-0000-0000-000000000000")


def test_loop_guard_through_the_standalone_proxy(proxied: ProxiedSite) -> None:
    _check_loop_guard(proxied.topo, proxied.url, proxied.client())
