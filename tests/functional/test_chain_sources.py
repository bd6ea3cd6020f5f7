"""Chained distribution (doc/peers.md): a region relays the prefix of a copy it is still receiving.

Real glances, the store's sshd, one confined sshd per region's cache, our
coordinator and agents.  Each agent's fetch is capped (``max_bandwidth``) so a copy
lasts long enough for the next region to follow it.  With ``max_source_fanout =
1`` three regions form a chain (store -> first -> second -> third) and run at
once: the store serves the image once, and the two downstream agents say they
followed a copy still arriving (which the tree without chaining never does: it
waits until a region holds a verified copy).  When the middle region's agent is
killed while the third follows it, the third falls back to the first region,
resuming after the bytes it had, and every region ends with the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sftp_openssh
from tests.functional import helpers
from tests.functional.test_peer_sources import (
    Site,
    assert_same_bytes,
    peer_site,
    sync_everywhere_from_one_store_copy,
)

SIZE = 24 * helpers.MIB + 12345
# One copy at a time per agent, held to 1 MB/s: a copy lasts about 25 s.
AGENT = {"max_bandwidth": 8, "max_concurrent_copies": 1, "transfer_idle_timeout": 15}
FOLLOWED = "following the copy still arriving at"
READ_BY_OPENSSH = "with OpenSSH's sftp, again as it grows"

pytestmark = [
    pytest.mark.skipif(sftp_openssh.find_binary() is None, reason="no OpenSSH sftp client installed"),
    pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="no sshd"),
]


class ChainSite(Site):
    def start_agent(self, region: str) -> None:
        if region in self.agents and self.agents[region].running:
            return
        self.agents[region] = self.topo.start_agent(region, conf=self.peers.agent_conf(region, **AGENT))

    def part_size(self, region: str, image_id: str) -> int:
        part = self.topo.work_dir(region) / f"{image_id}.part"
        return part.stat().st_size if part.exists() else 0

    def wait_part(self, region: str, image_id: str, size: int) -> None:
        helpers.wait_until(lambda: self.part_size(region, image_id) > size, 120,
                           f"{region}'s .part of {image_id} to hold more than {size} bytes")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from peer_site(tmp_path_factory.mktemp("chain"), ChainSite, max_source_fanout=1, chain_sources=True,
                         lease_timeout=20)


def test_three_regions_chained_from_one_store_transfer(site: ChainSite) -> None:
    regions = site.topo.region_names
    uploaded, served = sync_everywhere_from_one_store_copy(site, SIZE)
    # A chain: every region served by a different one, none by itself.
    peers_used = [source for source in served.values() if source != "cascading"]
    assert len(set(peers_used)) == 2 and all(served[r] != r for r in regions), served
    # The two downstream regions followed copies still arriving upstream: they did not wait
    # for a verified, registered copy (the tree without chaining would have).
    followed = [region for region in regions if f"image {uploaded.id}: {FOLLOWED}" in site.agent_log(region)]
    assert sorted(followed) == sorted(r for r in regions if served[r] != "cascading"), served
    # ... and read them with OpenSSH's sftp (fetch_method = openssh, the default), not paramiko.
    for region in followed:
        assert f"image {uploaded.id}: reading " in site.agent_log(region)
        assert READ_BY_OPENSSH in site.agent_log(region), site.agent_log(region)[-3000:]
    for region in regions:
        cache = site.peers.cache_dir(region)
        assert (cache / uploaded.id).stat().st_size == SIZE
        assert not (cache / f".growing.{uploaded.id}").exists()  # the relay name goes with the copy


def test_a_chain_that_loses_its_middle_region_converges(site: ChainSite) -> None:
    first, second, third = site.topo.region_names
    uploaded = site.upload_with_only_agent(first, SIZE)
    # The chain forms as the agents come: the first from the store, the second follows the
    # first (the store is at its fanout), the third follows the second (the first is too).
    site.wait_part(first, uploaded.id, helpers.MIB)
    site.start_agent(second)
    site.wait_part(second, uploaded.id, helpers.MIB)
    site.start_agent(third)
    site.wait_part(third, uploaded.id, 2 * helpers.MIB)
    assert f"image {uploaded.id}: {FOLLOWED}" in site.agent_log(third)

    # The middle region dies (its agent and workers killed): its relayed file stops growing.
    site.agents[second].kill()
    helpers.wait_states(site.topo, uploaded.id, {third: "synced"}, regions=[third], timeout=300)
    log = site.agent_log(third)
    fell_back = [line for line in log.splitlines() if f"image {uploaded.id}: source {second} failed" in line]
    assert fell_back, log[-3000:]
    kept = int(re.search(r"resuming after the (\d+) bytes", fell_back[0]).group(1))
    assert 2 * helpers.MIB < kept < SIZE  # the prefix relayed by the middle region was kept
    assert f"falling back to {first}" in fell_back[0]
    assert site.served_by(uploaded.id)[third] == first

    # The middle region comes back: the relay name its dead agent left is cleared, its copy retried.
    site.start_agent(second)
    helpers.wait_states(site.topo, uploaded.id, "synced", timeout=300)
    assert_same_bytes(site, uploaded)
    served = site.served_by(uploaded.id)
    assert served[first] == "cascading" and served[third] == first, served
    for region in (first, second, third):
        assert not (site.peers.cache_dir(region) / f".growing.{uploaded.id}").exists()
