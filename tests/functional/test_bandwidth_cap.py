"""``[agent] max_bandwidth`` against the real sshd and glance of the topology, on loopback.

Loopback moves these few MiB in a fraction of a second, so a fetch that takes at
least size / cap was held by the cap.  Only lower bounds are asserted: a busy
machine makes every copy slower, never faster.  What passes unpaced: the region's
budget lets its burst through (agent/ratelimit.py), and OpenSSH's own limiter does
not pace the first read of a transfer, nor the tail below its pacing threshold
after its last pause; with a link far faster than the cap that threshold stays at
one SFTP read (at most 256 KiB).  The budget file's count of bytes charged shows
that every fetched byte went through the one budget of the region.
"""

from __future__ import annotations

import threading
import time

import pytest

from agent import budget, cmd, ratelimit, sftp_openssh, transfer
from agent.task import WorkerSettings, run_task
from glancesync import glance, storemap
from tests.functional import helpers
from tests.harness.topology import Topology
from tests.unit.agent.helpers import make_conf

CAP_MBIT = 16.0  # 2 MB/s: loopback alone would be about a hundred times faster
# What OpenSSH's limiter lets through unpaced (its first read and the tail after its last pause).
UNPACED = 2 * 256 * 1024
SIZE = 3 * helpers.MIB + 777
# What the region's budget lets through at once.
BURST = int(ratelimit.burst_for(ratelimit.cap_bytes(CAP_MBIT)))


@pytest.fixture(scope="module")
def region(topology: Topology) -> str:
    return topology.region_names[0]


@pytest.fixture(scope="module")
def store_map(topology: Topology, region: str) -> storemap.StoreMap:
    return storemap.load(str(topology.agent_store_yaml(region)), storemap.Role.AGENT, region)


def _image(topology: Topology) -> dict:
    uploaded = helpers.upload_random(topology.cascading.client(), SIZE, name="bandwidth-cap")
    return glance.image_to_dict(topology.cascading.client().images.get(uploaded.id))


@pytest.fixture(scope="module")
def images(topology: Topology) -> list[dict]:
    return [_image(topology), _image(topology)]


def source_of(topology: Topology, image: dict) -> str:
    return str(topology.cascading.data_dir / image["id"])


def floor(size: int, mbit: float, unpaced: int) -> float:
    """Seconds ``size`` bytes need at ``mbit`` Mbit/s, less what the limiter lets pass unpaced."""
    return (size - unpaced) * 8 / (mbit * 1e6)


METHODS = [pytest.param("openssh", UNPACED, id="openssh", marks=pytest.mark.skipif(
    sftp_openssh.find_binary() is None, reason="no OpenSSH sftp client installed")),
    pytest.param("paramiko", 0, id="paramiko")]


@pytest.mark.parametrize(("method", "unpaced"), METHODS)
def test_a_capped_fetch_takes_at_least_size_over_cap_and_still_verifies(topology, store_map, images, tmp_path,
                                                                         method, unpaced):
    image = images[0]
    cap = ratelimit.cap_bytes(CAP_MBIT)
    budget_file = budget.budget_path(str(tmp_path))
    options = transfer.FetchOptions(method=method, idle_timeout=60.0, rate_limit=cap, budget_file=budget_file)
    started = time.monotonic()
    fetched = transfer.fetch(store_map.store, image, source_of(topology, image), str(tmp_path / "capped.part"),
                             lambda d, t: None, timeout=10, options=options)
    elapsed = time.monotonic() - started
    # sftp -l alone holds an openssh fetch; the budget holds either, less its burst.
    assert elapsed >= floor(image["size"], CAP_MBIT, min(unpaced or BURST, BURST)), elapsed
    assert budget.SharedBucket(budget_file, cap).state().charged == image["size"]
    assert (fetched.size, fetched.checksum, fetched.os_hash_value) == (
        image["size"], image["checksum"], image["os_hash_value"])
    assert (tmp_path / "capped.part").read_bytes() == (topology.cascading.data_dir / image["id"]).read_bytes()


def test_two_copies_of_one_agent_share_its_cap_and_both_verify(topology, region, store_map, images):
    """The agent's options as glance-sync-agent reads them: two copy slots, one cap for both."""
    conf = make_conf(1, region=region, workers=2)
    conf.set_override("max_bandwidth", CAP_MBIT, group="agent")
    fetch = cmd.fetch_options(conf.agent, str(store_map.region(region).work_dir))
    assert cmd.copy_slots(conf.agent) == 2
    shared = budget.SharedBucket(fetch.budget_file, fetch.rate_limit)
    charged = shared.state().charged
    settings = WorkerSettings(store_map=store_map, region=region, fetch=fetch)
    results: dict[str, dict] = {}

    def copy(image: dict) -> None:
        task = {"task_id": f"cap-{image['id']}", "attempt": 1, "kind": "copy", "image_id": image["id"],
                "region": region, "image": image, "source": {"type": "sftp", "path": source_of(topology, image)}}
        results[image["id"]] = run_task(task, settings, lambda d, t: None)

    threads = [threading.Thread(target=copy, args=(image,)) for image in images]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    elapsed = time.monotonic() - started
    assert [results[i["id"]]["outcome"] for i in images] == ["done", "done"], results
    # One budget for both: side by side, the two took what the whole cap allows for both, less its burst.
    total = sum(i["size"] for i in images)
    assert elapsed >= floor(total, CAP_MBIT, BURST), elapsed
    assert shared.state().charged - charged == total
    client = topology.cascaded[region].client()
    for image in images:
        regional = client.images.get(image["id"])
        assert (regional["status"], regional["checksum"]) == ("active", image["checksum"])
