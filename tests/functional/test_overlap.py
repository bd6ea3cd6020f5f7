"""Fetch and regional upload overlap (agent/pipeline.py), on the real sshd and glance-apis.

Each test runs one copy attempt with the worker's own function (``agent.task.run_task``)
in a thread, on an image that exists only as a file in the cascading store (no
cascading record, so no coordinator or agent of the session acts on it).  Once the
``.part`` has its first bytes, the store's sshd sessions are frozen (SIGSTOP): the
fetch can go no further.  The regional image is then seen ``saving`` in its
glance's database while the ``.part`` is still shorter than the image: the upload
began before the fetch ended.  The assertions are on that observed order, not on
timing; the old sequential copy never creates the regional image before the fetch
has ended, so there it never comes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from agent import sftp_openssh, transfer
from agent import task as task_mod
from glancesync import storemap
from tests.functional import helpers
from tests.harness.topology import Topology

SIZE = 128 * helpers.MIB
METHODS = ["paramiko"] + (["openssh"] if sftp_openssh.find_binary() else [])


@pytest.fixture(scope="module")
def store_map(topology: Topology) -> storemap.StoreMap:
    region = topology.region_names[0]
    return storemap.load(str(topology.agent_store_yaml(region)), storemap.Role.AGENT, region)


def stored_image(topology: Topology, corrupt: bool = False) -> tuple[dict, bytes]:
    """Random bytes as a file of the cascading store, and the record a copy task carries (of other bytes if corrupt)."""
    data = os.urandom(SIZE)
    image_id = str(uuid.uuid4())
    stored = data[:SIZE // 2] + bytes([data[SIZE // 2] ^ 0xFF]) + data[SIZE // 2 + 1:] if corrupt else data
    (topology.cascading.data_dir / image_id).write_bytes(stored)
    record = {"id": image_id, "name": f"overlap-{image_id[:8]}", "status": "active", "size": SIZE,
              "checksum": hashlib.md5(data).hexdigest(), "os_hash_algo": "sha512",
              "os_hash_value": hashlib.sha512(data).hexdigest(), "disk_format": "raw", "container_format": "bare"}
    return record, data


def sshd_sessions(topology: Topology) -> list[int]:
    """The pids below the store's sshd (its per-connection processes)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [topology.sshd.process.pid]
    while todo:
        parent = todo.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        todo += children
    return found


@contextlib.contextmanager
def frozen_fetch(topology: Topology, part: Path):
    """As soon as ``part`` has bytes, stop the sshd sessions; continue them on the way out."""
    helpers.wait_until(lambda: part.exists() and part.stat().st_size > 0, 120, "the first fetched bytes",
                       interval=0.005)
    stopped = sshd_sessions(topology)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def db_status(db_path, image_id: str) -> str | None:
    # The regional glance serves one request at a time and the upload holds it: ask its database.
    with sqlite3.connect(db_path) as db:
        row = db.execute("SELECT status FROM images WHERE id = ?", (image_id,)).fetchone()
    return row[0] if row else None


def start_copy(store_map: storemap.StoreMap, topology: Topology, image: dict, method: str,
               phases: list[str]) -> tuple[threading.Thread, dict]:
    region = topology.region_names[0]
    task = {"task_id": f"copy-{image['id']}", "attempt": 1, "kind": "copy", "image_id": image["id"],
            "region": region, "image": image,
            "source": {"type": "sftp", "path": str(topology.cascading.data_dir / image["id"])}}
    settings = task_mod.WorkerSettings(store_map=store_map, region=region, ssh_timeout=10.0,
                                       fetch=dataclasses.replace(transfer.FetchOptions(), method=method,
                                                                 idle_timeout=300.0))
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=task_mod.run_task(task, settings, lambda done, total: None, phases.append)), daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("method", METHODS)
def test_the_regional_upload_is_under_way_before_the_fetch_ends(topology: Topology, store_map, method: str) -> None:
    region = topology.region_names[0]
    server = topology.cascaded[region]
    image, data = stored_image(topology)
    part = topology.work_dir(region) / f"{image['id']}.part"
    phases: list[str] = []
    thread, outcome = start_copy(store_map, topology, image, method, phases)
    try:
        with frozen_fetch(topology, part):
            helpers.wait_until(lambda: db_status(server.db_path, image["id"]) == "saving", 120,
                               "the regional image saving while the fetch is frozen")
            # Observed in this order: the region ingests the image while the agent still lacks part of it.
            assert part.stat().st_size < SIZE
            assert phases == ["fetching"]
    finally:
        thread.join(600)
    assert outcome["result"]["outcome"] == "done", outcome
    assert phases == ["fetching", "uploading", "registering"]
    record = server.client().images.get(image["id"])
    assert (record["status"], record["size"], record["checksum"], record["os_hash_value"]) == (
        "active", SIZE, image["checksum"], image["os_hash_value"])
    assert hashlib.sha512(b"".join(server.client().images.data(image["id"]))).digest() == \
        hashlib.sha512(data).digest()
    assert not part.exists()


def test_a_corrupt_source_streamed_to_the_region_never_becomes_active(topology: Topology, store_map) -> None:
    region = topology.region_names[0]
    server = topology.cascaded[region]
    image, _ = stored_image(topology, corrupt=True)
    part = topology.work_dir(region) / f"{image['id']}.part"
    thread, outcome = start_copy(store_map, topology, image, METHODS[-1], [])
    try:
        with frozen_fetch(topology, part):
            helpers.wait_until(lambda: db_status(server.db_path, image["id"]) == "saving", 120,
                               "the regional image saving while the fetch is frozen")
    finally:
        thread.join(600)
    result = outcome["result"]
    assert result["outcome"] == "failed" and result["retryable"] is True, result
    assert "checksum mismatch" in result["reason"] and "received bytes" in result["reason"], result
    record = server.client().images.get(image["id"])
    # The upload streamed all but its last piece, then was aborted: glance put it back to queued.
    assert record["status"] == "queued" and record["checksum"] is None, dict(record)
    assert not part.exists()


def test_the_whole_system_shows_the_fetching_phase_while_the_region_already_ingests(topology: Topology,
                                                                                   sync) -> None:
    region = topology.region_names[0]
    server = topology.cascaded[region]
    uploaded = helpers.upload_random(topology.cascading.client(), SIZE, name="overlap-e2e")
    part = topology.work_dir(region) / f"{uploaded.id}.part"
    with frozen_fetch(topology, part):
        helpers.wait_until(lambda: db_status(server.db_path, uploaded.id) == "saving", 120,
                           "the regional image saving while the agent's fetch is frozen")
        # The bytes already in the .part are read and reported whatever the freeze.
        row = helpers.wait_until(
            lambda: (r := helpers.image_regions(topology, uploaded.id).get(region, {})).get("phase") == "fetching"
            and r, 60, "the fetching phase in the status")
        assert row["state"] == "transferring", row
        assert part.stat().st_size < SIZE and 0 < row["bytes_done"] < SIZE, row
        assert {"rate_bytes_per_s", "eta_seconds", "retry_at"} <= row.keys()
        text = helpers.run_status(topology, "image", uploaded.id)
        assert text.returncode == 0 and "transferring (fetching)" in text.stdout, text
    view = helpers.wait_states(topology, uploaded.id, "synced", timeout=600)
    assert all(view[name]["phase"] is None for name in topology.region_names), view
    record = server.client().images.get(uploaded.id)
    assert (record["status"], record["checksum"]) == ("active", uploaded.md5)
