"""Regions feed each other (doc/peers.md): real glances, the store's sshd, one confined sshd per region's cache.

With ``max_source_fanout = 1`` and three regions the cascading store serves an
image once and the other regions pull it from peers (from the agents' reports as
the journal keeps them: each ``done`` names the source that served the bytes, and
each cache file it reports is checked on disk); a peer that fails hands over to
the next source and the copy still converges, verified, with the same bytes, also
when the link to the peer is cut in the middle of the transfer (the fallback
resumes the ``.part``).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sftp_openssh
from coordinator.journal import unpack
from tests.functional import helpers
from tests.harness.peers import PeerCaches, SlowLink
from tests.harness.procs import ServiceProcess
from tests.harness.topology import Topology

SIZE = 24 * helpers.MIB + 12345

pytestmark = [
    pytest.mark.skipif(sftp_openssh.find_binary() is None, reason="no OpenSSH sftp client installed"),
    pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="no sshd"),
]


class Site:
    """The topology, its peer caches, the coordinator and one agent per region (started on demand)."""

    def __init__(self, topo: Topology, peers: PeerCaches) -> None:
        self.topo, self.peers = topo, peers
        self.agents: dict[str, ServiceProcess] = {}

    def start_agent(self, region: str) -> None:
        if region in self.agents and self.agents[region].running:
            return
        self.agents[region] = self.topo.start_agent(region, conf=self.peers.agent_conf(region))

    def stop_agent(self, region: str) -> None:
        self.agents[region].stop()

    def agent_log(self, region: str) -> str:
        return self.agents[region].log_path.read_text(errors="replace")

    def served_by(self, image_id: str) -> dict[str, str]:
        """Region -> the source its synced copy's ``done`` named (the journal's record of the reports)."""
        with sqlite3.connect(self.topo.journal_path) as db:
            rows = db.execute("SELECT region, report FROM tasks WHERE image_id = ? AND kind = 'copy' "
                              "AND state = 'synced' ORDER BY seq", (image_id,)).fetchall()
        return {region: (unpack(report) or {}).get("fetched_from") for region, report in rows}

    def wait_online(self, regions: list[str]) -> None:
        helpers.wait_until(lambda: all(helpers.online_agents(self.topo).get(r) for r in regions), 60,
                           f"agents of {regions} online")

    def upload_with_only_agent(self, region: str, size: int) -> helpers.Uploaded:
        """The other regions' agents stopped, ``region``'s running and online, then ``size`` random
        bytes uploaded to the cascading glance: only ``region`` can take the image's first copy."""
        for other in self.topo.region_names:
            if other != region and other in self.agents:
                self.stop_agent(other)
        self.start_agent(region)
        self.wait_online([region])
        return helpers.upload_random(self.topo.cascading.client(), size)


def peer_site(base: Path, site_class: type[Site], **coordinator: object) -> Iterator[Site]:
    """Three regions whose sshds serve their agents' caches, and a coordinator with ``coordinator``
    options; everything stopped after."""
    topo = Topology(base, regions=3, sync_filter=True, cascaded_store=True)
    peers = PeerCaches(topo)
    try:
        topo.start()
        peers.start()
        topo.write_service_conf(coordinator={"reconcile_interval": 0, **coordinator})
        topo.start_coordinator()
        yield site_class(topo, peers)
    finally:
        peers.stop()
        topo.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from peer_site(tmp_path_factory.mktemp("peers"), Site, max_source_fanout=1)


def regional_bytes(topo: Topology, region: str, image_id: str) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha512()
    for chunk in topo.cascaded[region].client().images.data(image_id):
        md5.update(chunk)
        sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def assert_same_bytes(site: Site, uploaded: helpers.Uploaded) -> None:
    for region in site.topo.region_names:
        assert regional_bytes(site.topo, region, uploaded.id) == (uploaded.md5, uploaded.sha512), region


def sync_everywhere_from_one_store_copy(site: Site, size: int) -> tuple[helpers.Uploaded, dict[str, str]]:
    """Every region's agent started, one image uploaded and synced byte-identical everywhere, the
    cascading store having served it once; the image and the source that served each region."""
    regions = site.topo.region_names
    for region in regions:
        site.start_agent(region)
    site.wait_online(regions)
    uploaded = helpers.upload_random(site.topo.cascading.client(), size)
    helpers.wait_states(site.topo, uploaded.id, "synced", timeout=300)
    assert_same_bytes(site, uploaded)
    served = site.served_by(uploaded.id)
    assert sorted(served) == sorted(regions), served
    assert list(served.values()).count("cascading") == 1, served
    return uploaded, served


def test_store_serves_the_image_once_and_the_regions_feed_each_other(site: Site) -> None:
    # The cascading store served the image once; the two other copies came from regions
    # that held a verified copy (never from themselves).
    regions = site.topo.region_names
    uploaded, served = sync_everywhere_from_one_store_copy(site, SIZE)
    first = next(region for region, source in served.items() if source == "cascading")
    for region, source in served.items():
        if region != first:
            assert source in regions and source != region, served
    sources = [line for region in regions for line in site.agent_log(region).splitlines()
               if f"{uploaded.id} fetched from peer region" in line]
    assert len(sources) == 2, sources
    # Every region now holds a verified copy in its cache, for later copies.
    for region in regions:
        cached = site.peers.cache_dir(region) / uploaded.id
        assert cached.stat().st_size == SIZE


def test_a_failing_peer_hands_over_to_the_next_source_and_the_copy_converges(site: Site) -> None:
    first, second, third = site.topo.region_names
    uploaded = site.upload_with_only_agent(first, SIZE)
    helpers.wait_states(site.topo, uploaded.id, {first: "synced"}, regions=[first], timeout=300)
    assert (site.peers.cache_dir(first) / uploaded.id).exists()

    # The first region's cache server dies: it is still a holder for the coordinator (its
    # agent is online), so the next copies are told to try it first.
    site.peers.servers[first].stop()
    site.start_agent(second)
    helpers.wait_states(site.topo, uploaded.id, {second: "synced"}, regions=[second], timeout=300)
    site.start_agent(third)
    helpers.wait_states(site.topo, uploaded.id, "synced", timeout=300)
    assert_same_bytes(site, uploaded)

    second_log, third_log = site.agent_log(second), site.agent_log(third)
    # The second region fell back from the dead peer to the store ...
    assert f"image {uploaded.id}: source {first} failed" in second_log
    # ... and the third, told to try the first region then the second, got it from the second.
    assert f"image {uploaded.id}: source {first} failed" in third_log
    assert f"image {uploaded.id} fetched from peer region {second}" in third_log
    # The store served the first copy and the second region's fallback: never the third.
    assert site.served_by(uploaded.id) == {first: "cascading", second: "cascading", third: second}


def test_a_link_cut_mid_transfer_resumes_from_the_next_source(site: Site) -> None:
    """The second region's cache serves the third through a slow link, cut once part of the file has arrived."""
    first, second, third = site.topo.region_names
    # The first region's cache is dead (above): its agent is kept out of this image.
    uploaded = site.upload_with_only_agent(second, SIZE)
    helpers.wait_states(site.topo, uploaded.id, {second: "synced"}, regions=[second], timeout=300)

    link = SlowLink(site.peers.servers[second].port, rate=2 * helpers.MIB)
    try:
        site.peers.route_through(third, second, link.port)
        site.start_agent(third)
        part = site.topo.work_dir(third) / f"{uploaded.id}.part"
        helpers.wait_until(lambda: part.exists() and part.stat().st_size > 2 * helpers.MIB, 120,
                           "the third region's .part to hold part of the image")
        link.cut()
        helpers.wait_states(site.topo, uploaded.id, {third: "synced"}, regions=[third], timeout=300)
    finally:
        link.cut()
    assert regional_bytes(site.topo, third, uploaded.id) == (uploaded.md5, uploaded.sha512)
    log = site.agent_log(third)
    fell_back = [line for line in log.splitlines() if f"image {uploaded.id}: source {second} failed" in line]
    assert fell_back, log[-3000:]
    kept = int(fell_back[0].split("resuming after the ")[1].split(" bytes")[0])
    assert 2 * helpers.MIB < kept < SIZE  # the store's fetch resumed after the bytes the peer had sent
    assert site.served_by(uploaded.id) == {second: "cascading", third: "cascading"}
