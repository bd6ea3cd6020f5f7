"""The agent's data plane on real services: SFTP from a real sshd, registration in a real glance-api.

No coordinator here: the worker's own function (``agent.task.run_task``) and the
transfer/upload modules are called in-process against the session topology
(cascading glance + sshd serving its file store, cascaded glances), so a failure
points at the agent and nothing else.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import zmq
from glanceclient import exc as glance_exc

from agent import task as task_mod
from agent import transfer
from agent.cmd import build_pool
from agent.service import AgentService
from glancesync import glance, protocol, storemap
from glancesync.exceptions import SourceRefused
from tests.functional import helpers
from tests.harness.topology import Topology
from tests.unit.agent.helpers import make_conf


@pytest.fixture(scope="module")
def store_map(topology: Topology) -> storemap.StoreMap:
    """What the agents' hosts load, both regions in one map (their SFTP account is the same)."""
    own = {r: storemap.load(str(topology.agent_store_yaml(r)), storemap.Role.AGENT, r) for r in topology.region_names}
    return dataclasses.replace(own[topology.region_names[0]], regions={r: m.region(r) for r, m in own.items()})


@pytest.fixture(scope="module")
def image(topology: Topology) -> dict:
    uploaded = helpers.upload_random(topology.cascading.client(), 8 * helpers.MIB, hw_disk_bus="virtio",
                                     tags=["agent-test"])
    return glance.image_to_dict(topology.cascading.client().images.get(uploaded.id))


def copy_task(topology: Topology, image: dict, region: str, kind: str = "copy") -> dict:
    path = str(topology.cascading.data_dir / image["id"])
    return {"task_id": f"{kind}-{image['id']}", "attempt": 1, "kind": kind, "image_id": image["id"],
            "region": region, "image": image, "source": {"type": "sftp", "path": path}}


def settings(store_map: storemap.StoreMap, region: str) -> task_mod.WorkerSettings:
    return task_mod.WorkerSettings(store_map=store_map, region=region, ssh_timeout=10.0)


def test_copy_creates_same_id_with_verified_bytes_and_is_idempotent(topology, store_map, image):
    region = topology.region_names[0]
    progress: list[tuple[int, int]] = []
    result = task_mod.run_task(copy_task(topology, image, region), settings(store_map, region),
                               lambda d, t: progress.append((d, t)))
    assert result["outcome"] == "done", result
    assert (result["size"], result["checksum"], result["os_hash_value"]) == (
        image["size"], image["checksum"], image["os_hash_value"])
    assert progress and progress[-1] == (image["size"], image["size"])
    regional = topology.cascaded[region].client().images.get(image["id"])
    assert regional["status"] == "active" and regional["os_hash_value"] == image["os_hash_value"]
    assert regional["hw_disk_bus"] == "virtio" and regional["tags"] == ["agent-test"]
    assert regional["name"] == image["name"]
    assert not (topology.work_dir(region) / f"{image['id']}.part").exists()
    # A second run finds the verified copy and does nothing (no transfer: no progress).
    progress.clear()
    again = task_mod.run_task(copy_task(topology, image, region), settings(store_map, region),
                              lambda d, t: progress.append((d, t)))
    assert again["outcome"] == "done" and again["os_hash_value"] == image["os_hash_value"] and progress == []


def test_queued_leftover_is_completed(topology, store_map):
    client = topology.cascading.client()
    uploaded = helpers.upload_random(client, 2 * helpers.MIB)
    image = glance.image_to_dict(client.images.get(uploaded.id))
    region = topology.region_names[1]
    regional_client = topology.cascaded[region].client()
    regional_client.images.create(id=image["id"], disk_format="raw", container_format="bare", name="half")
    result = task_mod.run_task(copy_task(topology, image, region), settings(store_map, region), lambda d, t: None)
    assert result["outcome"] == "done", result
    assert regional_client.images.get(image["id"])["status"] == "active"


def test_update_then_delete(topology, store_map, image):
    region = topology.region_names[0]
    assert task_mod.run_task(copy_task(topology, image, region), settings(store_map, region),
                             lambda d, t: None)["outcome"] == "done"
    changed = dict(image, name="renamed", status="deactivated", min_ram=64)
    changed.pop("hw_disk_bus")
    result = task_mod.run_task(copy_task(topology, changed, region, "update"), settings(store_map, region),
                               lambda d, t: None)
    assert result["outcome"] == "done", result
    regional_client = topology.cascaded[region].client()
    regional = regional_client.images.get(image["id"])
    assert (regional["name"], regional["min_ram"], regional["status"]) == ("renamed", 64, "deactivated")
    assert "hw_disk_bus" not in regional
    for _ in range(2):  # the second delete finds nothing and still succeeds
        result = task_mod.run_task(copy_task(topology, image, region, "delete"), settings(store_map, region),
                                   lambda d, t: None)
        assert result["outcome"] == "done", result
    with pytest.raises(glance_exc.HTTPNotFound):
        regional_client.images.get(image["id"])
    # Glance never re-creates a deleted id: the copy fails for good, saying why.
    result = task_mod.run_task(copy_task(topology, image, region), settings(store_map, region), lambda d, t: None)
    assert result["outcome"] == "failed" and result["retryable"] is False, result
    assert "deleted" in result["reason"]


def test_wrong_host_key_is_refused_naming_host_and_file(topology, store_map, image, tmp_path):
    wrong = dataclasses.replace(store_map.store, known_hosts_file=str(topology.sshd.wrong_known_hosts_file))
    source = str(topology.cascading.data_dir / image["id"])
    with pytest.raises(SourceRefused) as info:
        transfer.fetch(wrong, image, source, str(tmp_path / "x.part"), lambda d, t: None, timeout=10)
    message = str(info.value)
    assert info.value.retryable is False
    assert f"{wrong.host}:{wrong.port}" in message and str(topology.sshd.wrong_known_hosts_file) in message
    empty = tmp_path / "known_hosts.empty"
    empty.write_text("")
    unknown = dataclasses.replace(store_map.store, known_hosts_file=str(empty))
    with pytest.raises(SourceRefused) as info:
        transfer.fetch(unknown, image, source, str(tmp_path / "y.part"), lambda d, t: None, timeout=10)
    assert "not in known_hosts" in str(info.value) and str(empty) in str(info.value)


def test_corrupted_source_fails_verification_and_leaves_no_file(topology, store_map, image, tmp_path):
    lying = dict(image, os_hash_value="0" * 128)
    source = str(topology.cascading.data_dir / image["id"])
    dest = tmp_path / "img.part"
    with pytest.raises(transfer.VerificationError) as info:
        transfer.fetch(store_map.store, lying, source, str(dest), lambda d, t: None, timeout=10)
    assert "os_hash_value (sha512) mismatch" in str(info.value) and not dest.exists()


def test_symlink_in_store_dir_is_refused_not_followed(topology, store_map, image, tmp_path):
    """A link inside the store directory pointing outside it: lexically inside, really outside."""
    data_dir = topology.cascading.data_dir
    outside = tmp_path / "outside.img"
    outside.write_bytes((data_dir / image["id"]).read_bytes())  # same bytes: only the link check can refuse
    link = data_dir / f"link-{image['id']}"
    link.symlink_to(outside)
    linked_dir = data_dir / f"dirlink-{image['id']}"
    linked_dir.symlink_to(tmp_path, target_is_directory=True)
    try:
        for source, why in ((str(link), "symbolic link"), (str(linked_dir / "outside.img"), "symbolic link"),
                            (str(data_dir / "."), "outside")):
            dest = tmp_path / "x.part"
            with pytest.raises(SourceRefused) as info:
                checked = transfer.checked_source(image["id"], {"type": "sftp", "path": source}, store_map.store)
                transfer.fetch(store_map.store, image, checked, str(dest), lambda d, t: None, timeout=10)
            assert info.value.retryable is False and why in str(info.value), str(info.value)
            assert not dest.exists() or dest.stat().st_size == 0
        # A directory inside the store is not a file either.
        subdir = data_dir / f"dir-{image['id']}"
        subdir.mkdir()
        try:
            with pytest.raises(SourceRefused) as info:
                transfer.fetch(store_map.store, image, str(subdir), str(tmp_path / "d.part"), lambda d, t: None,
                               timeout=10)
            assert "not a regular file" in str(info.value)
        finally:
            subdir.rmdir()
    finally:
        link.unlink()
        linked_dir.unlink()


def test_throughput_100mib(topology, store_map, tmp_path):
    uploaded = helpers.upload_random(topology.cascading.client(), 100 * helpers.MIB)
    image = glance.image_to_dict(topology.cascading.client().images.get(uploaded.id))
    source = str(topology.cascading.data_dir / image["id"])
    started = time.monotonic()
    fetched = transfer.fetch(store_map.store, image, source, str(tmp_path / "big.part"), lambda d, t: None)
    seconds = time.monotonic() - started
    print(f"\nSFTP fetch + md5 + sha512 of 100 MiB: {seconds:.2f} s = {100 / seconds:.1f} MiB/s")
    assert fetched.size == image["size"]



@pytest.mark.parametrize("mode", ["pool", "spawn"])
def test_service_runs_a_real_copy_in_a_worker_then_an_update_and_a_delete(topology, store_map, mode):
    """Session + worker (forked from the pre-imported server, or spawned) + SFTP + glance, then an
    update and a delete (in an agent thread under worker_mode = pool); the test plays the coordinator."""
    uploaded = helpers.upload_random(topology.cascading.client(), 4 * helpers.MIB)
    image = glance.image_to_dict(topology.cascading.client().images.get(uploaded.id))
    region = topology.region_names[1]
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    pool = build_pool(mode, 1, 120.0, settings(store_map, region))
    service = AgentService(make_conf(port, region=region, workers=1, heartbeat=5.0), pool, context=ctx)
    peers: list[bytes] = []

    def until(msg_type: str, limit: float = 90.0) -> protocol.Message:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            service.step(time.monotonic(), timeout_ms=50)
            while router.poll(0):
                peer, frame = router.recv_multipart()
                peers.append(peer)
                msg = protocol.decode(frame)
                if msg.type == "hello":
                    welcome = {"heartbeat_interval": 5.0, "lease_timeout": 60.0}
                    router.send_multipart([peer, protocol.encode("welcome", welcome)])
                if msg.type == msg_type:
                    return msg
        raise AssertionError(f"the agent never sent {msg_type}")

    def run(task: dict) -> protocol.Message:
        router.send_multipart([peers[-1], protocol.encode("task", task)])
        assert until("ack").body["task_id"] == task["task_id"]
        answer = until("done")
        while answer.body["task_id"] != task["task_id"]:  # an earlier done, resent before its ack arrived
            answer = until("done")
        ack = {"task_id": task["task_id"], "attempt": task["attempt"]}
        router.send_multipart([peers[-1], protocol.encode("result_ack", ack)])
        assert until("ready").body["credits"] == 1
        return answer

    try:
        service.initialize(time.monotonic())
        assert until("ready").body["credits"] == 1
        done = run(copy_task(topology, image, region))
        assert done.body["os_hash_value"] == image["os_hash_value"] and done.body["size"] == image["size"]
        regional_client = topology.cascaded[region].client()
        regional = regional_client.images.get(image["id"])
        assert regional["status"] == "active" and regional["checksum"] == image["checksum"]
        run(copy_task(topology, dict(image, name="renamed-by-update", min_ram=32), region, "update"))
        regional = regional_client.images.get(image["id"])
        assert (regional["name"], regional["min_ram"]) == ("renamed-by-update", 32)
        run(copy_task(topology, image, region, "delete"))
        with pytest.raises(glance_exc.HTTPNotFound):
            regional_client.images.get(image["id"])
    finally:
        service.shutdown()
        router.close(linger=0)
        ctx.destroy(linger=0)
