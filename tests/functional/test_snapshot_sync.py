"""Snapshot sync end to end (doc/snapshots.md): a snapshot made in RegionA reaches RegionB and RegionC.

A topology of its own: three regions, and each agent's glance_store.yaml names the
other regions' ``source`` (a download account of their glance).  The snapshot is made
as the original's patched glance left it: the image in RegionA's glance (queued, its
bytes uploaded later), and a queued cascading image with the same id whose only
location is ``cascaded://RegionA/<id>``.  glance 33's API cannot put a location on a
queued image (a location makes it active at once, doc/glance-behaviour.md), so the
location row is written into the cascading glance's database, as that glance did.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.journal.base import unpack
from glancesync.protocol import INTERNAL_REQUEST_HEADER, cascaded_url
from tests.functional import helpers
from tests.harness.glance import admin_client, venv_bin
from tests.harness.sshd import SshServer
from tests.harness.topology import Topology

SOURCE = "RegionA"


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    topology = Topology(tmp_path_factory.mktemp("snapshots"), regions=3, sync_filter=True, cascaded_store=True,
                        snapshot_sources=True)
    try:
        topology.start()
        helpers.start_services(topology)
        yield topology
    finally:
        topology.stop()


def _snapshot(topo: Topology, name: str, silent: bool = False) -> str:
    """RegionA's image (queued) and the queued cascading image pointing at it; an event announces it
    (``silent``: none does, every event lost)."""
    regional = topo.cascaded[SOURCE].client().images.create(
        name=name, disk_format="raw", container_format="bare", image_type="snapshot")
    image_id = regional["id"]
    cascading = (admin_client(topo.cascading.url, **{INTERNAL_REQUEST_HEADER: "1"}) if silent
                 else topo.cascading.client())
    cascading.images.create(id=image_id, name=name, disk_format="raw", container_format="bare",
                            image_type="snapshot")
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    with sqlite3.connect(topo.cascading.db_path, timeout=30) as db:
        db.execute("INSERT INTO image_locations (image_id, value, meta_data, status, created_at, updated_at, "
                   "deleted) VALUES (?, ?, '{}', 'active', ?, ?, 0)",
                   (image_id, cascaded_url(SOURCE, image_id), now, now))
    # The create's event may have been planned before the location was there: this one is not.
    cascading.images.update(image_id, snapshot_of="instance-1")
    return image_id


def _journal(topo: Topology, query: str, *args: object) -> list[tuple]:
    with sqlite3.connect(topo.journal_path, timeout=30) as db:
        return db.execute(query, args).fetchall()


def _deferred(topo: Topology, image_id: str) -> bool:
    """An event of the image waits for RegionA's image (fetched again later, not planned yet)."""
    rows = _journal(topo, "SELECT not_before, received_at FROM events WHERE image_id = ? AND planned = 0", image_id)
    return any(not_before > received_at for not_before, received_at in rows)


def test_a_snapshot_made_in_region_a_reaches_b_and_c_from_a(topo: Topology) -> None:
    image_id = _snapshot(topo, "snap-e2e")
    helpers.wait_until(lambda: _deferred(topo, image_id), 60, "the coordinator waiting for RegionA's image")
    data = os.urandom(3 * helpers.MIB // 2)
    md5, sha512 = hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()
    topo.cascaded[SOURCE].client().images.upload(image_id, io.BytesIO(data), image_size=len(data))

    helpers.wait_states(topo, image_id, "synced", timeout=180)
    for region in ("RegionB", "RegionC"):
        client = topo.cascaded[region].client()
        copy = client.images.get(image_id)
        assert (copy["status"], copy["size"], copy["checksum"], copy["os_hash_value"]) == (
            "active", len(data), md5, sha512)
        assert copy["image_type"] == "snapshot"
        assert b"".join(client.images.data(image_id)) == data
    # The bytes came from RegionA's glance, never from the cascading store.
    sources = {region: unpack(payload)["source"] for region, payload in _journal(
        topo, "SELECT region, payload FROM tasks WHERE image_id = ? AND kind = 'copy'", image_id)}
    assert sources == {r: {"type": "glance", "region": SOURCE} for r in ("RegionA", "RegionB", "RegionC")}
    assert not any(Path(topo.cascading.data_dir).rglob(f"{image_id}*"))
    # The cascading image: active with the snapshot's hashes, every region's location, RegionA's first.
    cascading = topo.cascading.client()
    image = cascading.images.get(image_id)
    assert (image["status"], image["checksum"], image["os_hash_value"]) == ("active", md5, sha512)
    urls = [loc["url"] for loc in image["locations"]]
    assert urls[0] == cascaded_url(SOURCE, image_id)
    assert sorted(urls) == sorted(cascaded_url(r, image_id) for r in topo.region_names)
    assert b"".join(cascading.images.data(image_id)) == data


def test_a_snapshot_announced_through_glance_33s_location_api_is_spread_too(topo: Topology) -> None:
    """glance 33's own way: the location is added once RegionA has the bytes; the image is active at once."""
    regional = topo.cascaded[SOURCE].client()
    data = os.urandom(helpers.MIB)
    image_id = regional.images.create(name="snap-api", disk_format="raw", container_format="bare")["id"]
    regional.images.upload(image_id, io.BytesIO(data), image_size=len(data))
    cascading = topo.cascading.client()
    cascading.images.create(id=image_id, name="snap-api", disk_format="raw", container_format="bare")
    cascading.images.add_location(image_id, cascaded_url(SOURCE, image_id), {})
    helpers.wait_states(topo, image_id, "synced", timeout=180)
    for region in ("RegionB", "RegionC"):
        copy = topo.cascaded[region].client().images.get(image_id)
        assert (copy["size"], copy["os_hash_value"]) == (len(data), hashlib.sha512(data).hexdigest())
    assert b"".join(cascading.images.data(image_id)) == data


def _stop_coordinator(topo: Topology) -> None:
    for service in [s for s in topo.services if s.name == "coordinator"]:
        service.stop()
        topo.services.remove(service)


def test_a_queued_snapshot_whose_events_were_lost_is_planned_by_the_reconciler(topo: Topology) -> None:
    _stop_coordinator(topo)  # plan looks before any pass does
    image_id = _snapshot(topo, "snap-lost", silent=True)
    assert not _journal(topo, "SELECT event_id FROM events WHERE image_id = ?", image_id)
    result = subprocess.run([venv_bin("glance-sync-manage"), "--config-file", str(topo.service_conf), "plan",
                             image_id], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{image_id}  *") and "queued snapshot" in result.stdout, result.stdout
    topo.start_coordinator(topo.service_conf)  # its first pass makes the missing event, which waits
    helpers.wait_until(lambda: _deferred(topo, image_id), 120, "the reconciler's event waiting for RegionA's image")
    data = os.urandom(helpers.MIB)
    topo.cascaded[SOURCE].client().images.upload(image_id, io.BytesIO(data), image_size=len(data))
    helpers.wait_states(topo, image_id, "synced", timeout=180)
    assert topo.cascading.client().images.get(image_id)["os_hash_value"] == hashlib.sha512(data).hexdigest()


def test_a_snapshot_with_no_target_but_its_region_stays_queued_and_status_says_why(topo: Topology) -> None:
    conf = topo.write_service_conf(topo.etc_dir / "glance-sync-none.conf", DEFAULT={"sync_strategy": "None"})
    _stop_coordinator(topo)
    topo.start_coordinator(conf)
    image_id = _snapshot(topo, "snap-alone")
    data = os.urandom(helpers.MIB)
    topo.cascaded[SOURCE].client().images.upload(image_id, io.BytesIO(data), image_size=len(data))
    helpers.wait_states(topo, image_id, {SOURCE: "synced"}, regions=[SOURCE], conf=conf, timeout=180)
    view = helpers.status(topo, "image", image_id, conf=conf)
    assert set(view["regions"]) == {SOURCE} and view["targeting_error"] is None
    assert "stays queued" in view["note"] and f"no target but {SOURCE}" in view["note"], view
    text = helpers.run_status(topo, "image", image_id, conf=conf).stdout
    assert "note: the cascading image stays queued" in text, text
    assert helpers.run_status(topo, "--wait", image_id, "--timeout", "30", conf=conf).returncode == 0
    assert topo.cascading.client().images.get(image_id)["status"] == "queued"


def test_a_snapshot_that_stays_queued_fails_after_snapshot_timeout(topo: Topology) -> None:
    conf = topo.write_service_conf(topo.etc_dir / "glance-sync-short.conf", DEFAULT={"snapshot_timeout": 3})
    _stop_coordinator(topo)
    topo.start_coordinator(conf)
    image_id = _snapshot(topo, "snap-never")
    view = helpers.wait_states(topo, image_id, "failed", timeout=120)
    for region in topo.region_names:
        assert "snapshot_timeout" in view[region]["last_error"], view[region]
        assert "still queued" in view[region]["last_error"], view[region]
    for region in ("RegionB", "RegionC"):
        assert image_id not in [i["id"] for i in topo.cascaded[region].client().images.list()]
    assert topo.cascading.client().images.get(image_id)["status"] == "queued"


def _map_source_store(topo: Topology, sshd: SshServer) -> None:
    """RegionA's glance file store in every glance_store.yaml: the SFTP account for the agents, store_dir for
    the coordinator; then every service restarted to read them."""
    store_dir = topo.cascaded[SOURCE].data_dir

    def edit(path: Path, source: dict[str, Any]) -> None:
        data = yaml.safe_load(path.read_text())
        data["regions"].setdefault(SOURCE, {}).setdefault("source", {})["store"] = source
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    edit(topo.store_yaml, {"store_dir": str(store_dir)})
    for region in topo.region_names:
        if region != SOURCE:
            edit(topo.agent_store_yaml(region), Topology.sftp_account(sshd, store_dir))
    topo.stop_services()
    helpers.start_services(topo)


def test_a_snapshot_in_a_region_whose_store_is_mapped_is_read_over_sftp_there(topo: Topology) -> None:
    confine = os.geteuid() == 0
    sshd = SshServer(topo.base_dir / "sshd-RegionA", chroot_dir=topo.cascaded[SOURCE].data_dir if confine else None)
    sshd.start()
    try:
        _map_source_store(topo, sshd)
        regional = topo.cascaded[SOURCE].client()
        data = os.urandom(helpers.MIB)
        image_id = regional.images.create(name="snap-sftp", disk_format="raw", container_format="bare")["id"]
        regional.images.upload(image_id, io.BytesIO(data), image_size=len(data))
        cascading = topo.cascading.client()
        cascading.images.create(id=image_id, name="snap-sftp", disk_format="raw", container_format="bare")
        cascading.images.add_location(image_id, cascaded_url(SOURCE, image_id), {})
        helpers.wait_states(topo, image_id, "synced", timeout=180)
        for region in ("RegionB", "RegionC"):
            client = topo.cascaded[region].client()
            assert b"".join(client.images.data(image_id)) == data
        path = str(topo.cascaded[SOURCE].data_dir / image_id)
        sources = {region: unpack(payload)["source"] for region, payload in _journal(
            topo, "SELECT region, payload FROM tasks WHERE image_id = ? AND kind = 'copy'", image_id)}
        assert sources["RegionB"] == sources["RegionC"] == {"type": "sftp", "region": SOURCE, "path": path}
        assert sshd.log_path.read_text(errors="replace").count("Accepted publickey") >= 2
    finally:
        sshd.stop()
