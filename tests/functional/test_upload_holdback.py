"""The agent's copy path against real glance-apis: what is uploaded is what was verified.

Each test but the last plays one attempt at a time with the worker's own function
(``agent.task.run_task``) in-process, over the real sshd and glance-apis, on an image
that exists only as a file in the cascading store (no cascading record, so no
coordinator or agent of the session ever acts on it).  The last one runs the whole
system on a 0-byte image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import signal
import sqlite3
import threading
import uuid

import pytest

from agent import task as task_mod
from agent import transfer
from glancesync import storemap
from tests.functional import helpers
from tests.functional.services import SyncServices
from tests.harness.topology import Topology

REAL_FETCH = transfer.fetch


@pytest.fixture(scope="module")
def store_map(topology: Topology) -> storemap.StoreMap:
    """What the agents' hosts load (their role reads work_dir), both regions in one map."""
    own = {r: storemap.load(str(topology.agent_store_yaml(r)), storemap.Role.AGENT, r) for r in topology.region_names}
    return dataclasses.replace(own[topology.region_names[0]], regions={r: m.region(r) for r, m in own.items()})


def stored_image(topology: Topology, size: int) -> tuple[dict, bytes]:
    """Random bytes as a file of the cascading store, and the record a copy task would carry."""
    data = os.urandom(size)
    image_id = str(uuid.uuid4())
    (topology.cascading.data_dir / image_id).write_bytes(data)
    record = {"id": image_id, "name": f"holdback-{image_id[:8]}", "status": "active", "size": size,
              "checksum": hashlib.md5(data).hexdigest(), "os_hash_algo": "sha512",
              "os_hash_value": hashlib.sha512(data).hexdigest(), "disk_format": "raw", "container_format": "bare"}
    return record, data


def run_copy(topology: Topology, store_map: storemap.StoreMap, image: dict, region: str,
             progress: list | None = None) -> dict:
    task = {"task_id": f"copy-{image['id']}", "attempt": 1, "kind": "copy", "image_id": image["id"],
            "region": region, "image": image,
            "source": {"type": "sftp", "path": str(topology.cascading.data_dir / image["id"])}}
    settings = task_mod.WorkerSettings(store_map=store_map, region=region, ssh_timeout=10.0)
    seen = progress if progress is not None else []
    return task_mod.run_task(task, settings, lambda done, total: seen.append(done))


def fetch_then(change):
    """transfer.fetch that verifies the stream as usual, then lets ``change`` rewrite the .part (a second writer).

    The upload starts only once this returns (no ``on_start`` is passed on), so
    it reads what ``change`` left: its own check must catch it.
    """
    def fetch(store, image, source, dest, progress, on_start=None, **kwargs):
        fetched = REAL_FETCH(store, image, source, dest, progress, **kwargs)
        with open(dest, "r+b") as part:
            change(part)
        return fetched

    return fetch


def test_a_part_with_other_bytes_is_never_uploaded_whole_and_a_good_attempt_completes_the_image(
        topology: Topology, store_map: storemap.StoreMap, monkeypatch: pytest.MonkeyPatch) -> None:
    region = topology.region_names[0]
    image, data = stored_image(topology, 8 * helpers.MIB)
    regional = topology.cascaded[region].client()
    part = topology.work_dir(region) / f"{image['id']}.part"

    def append(handle) -> None:  # two writers: more bytes than the image (glance said "Size exceeds")
        handle.seek(0, os.SEEK_END)
        handle.write(b"x" * 65536)

    def flip_first_byte(handle) -> None:  # same size, other bytes: caught only after most were sent
        handle.write(bytes([data[0] ^ 0xFF]))

    for change, words in ((append, "size mismatch"), (flip_first_byte, "checksum mismatch")):
        monkeypatch.setattr(transfer, "fetch", fetch_then(change))
        result = run_copy(topology, store_map, image, region)
        assert result["outcome"] == "failed" and result["retryable"] is True, result
        assert words in result["reason"] and "bytes being uploaded" in result["reason"], result
        record = regional.images.get(image["id"])
        assert record["status"] == "queued" and record["checksum"] is None, dict(record)
        assert not part.exists()

    monkeypatch.undo()
    result = run_copy(topology, store_map, image, region)
    assert result["outcome"] == "done", result
    record = regional.images.get(image["id"])
    # The same id, never active before (glance refuses an upload into an active image).
    assert record["status"] == "active" and record["name"] == image["name"]
    assert (record["size"], record["checksum"], record["os_hash_value"]) == (
        image["size"], image["checksum"], image["os_hash_value"])
    assert b"".join(regional.images.data(image["id"])) == data


def test_a_part_left_by_an_attempt_now_over_is_resumed_when_good_and_fetched_afresh_when_not(
        topology: Topology, store_map: storemap.StoreMap) -> None:
    region = topology.region_names[0]
    regional = topology.cascaded[region].client()
    for leftover_is_good in (True, False):
        image, data = stored_image(topology, 4 * helpers.MIB)
        part = topology.work_dir(region) / f"{image['id']}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        # What a killed attempt leaves: the first 3 MiB, or (a write lost in a crash) other bytes.
        part.write_bytes(data[:3 * helpers.MIB] if leftover_is_good else os.urandom(3 * helpers.MIB))
        progress: list[int] = []
        result = run_copy(topology, store_map, image, region, progress)
        assert result["outcome"] == "done", result  # in this one attempt, either way
        if leftover_is_good:
            assert progress[0] > 3 * helpers.MIB, progress[:3]  # resumed, not fetched again
        record = regional.images.get(image["id"])
        assert (record["status"], record["checksum"]) == ("active", image["checksum"])
        assert not part.exists()


@contextlib.contextmanager
def size_cap(server, cap: int):
    """Run ``server`` (a regional glance of the session) with ``image_size_cap = cap`` for a while."""
    plain = server.conf_sections

    def sections() -> dict:
        conf = plain()
        conf["DEFAULT"]["image_size_cap"] = str(cap)
        return conf

    server.conf_sections = sections
    try:
        server.restart()
        yield server
    finally:
        server.conf_sections = plain
        server.restart()


def test_an_upload_refused_while_the_image_stays_queued_is_retried_and_completes_later(
        topology: Topology, store_map: storemap.StoreMap) -> None:
    region = topology.region_names[1]
    image, _ = stored_image(topology, 2 * helpers.MIB)
    with size_cap(topology.cascaded[region], helpers.MIB):
        result = run_copy(topology, store_map, image, region)
        assert result["outcome"] == "failed", result
        assert result["retryable"] is True and "still queued" in result["reason"], result
        assert topology.cascaded[region].client().images.get(image["id"])["status"] == "queued"
    result = run_copy(topology, store_map, image, region)
    assert result["outcome"] == "done", result
    record = topology.cascaded[region].client().images.get(image["id"])
    assert (record["status"], record["checksum"]) == ("active", image["checksum"])


class StallingBody:
    """An upload body that sends ``first`` bytes of ``data`` and then waits until told to go on."""

    def __init__(self, data: bytes, first: int) -> None:
        self.data, self.first, self.pos = data, first, 0
        self.stalled, self.release = threading.Event(), threading.Event()

    def read(self, _size: int = -1) -> bytes:
        if self.pos >= self.first:
            self.stalled.set()
            self.release.wait(120)
        piece = self.data[self.pos:self.pos + 65536]
        self.pos += len(piece)
        return piece


def db_status(db_path, image_id: str) -> str | None:
    with sqlite3.connect(db_path) as db:
        row = db.execute("SELECT status FROM images WHERE id = ?", (image_id,)).fetchone()
    return row[0] if row else None


def test_an_image_left_saving_by_a_dead_glance_api_is_completed_after_the_operator_step_the_reason_gives(
        topology: Topology, store_map: storemap.StoreMap) -> None:
    region = topology.region_names[1]
    server = topology.cascaded[region]
    image, data = stored_image(topology, 4 * helpers.MIB)
    client = server.client()
    client.images.create(id=image["id"], name=image["name"], disk_format="raw", container_format="bare")
    body = StallingBody(data, 2 * helpers.MIB)
    uploader = threading.Thread(target=lambda: _ignore_errors(client.images.upload, image["id"], body,
                                                              image_size=image["size"]), daemon=True)
    uploader.start()
    partial = server.data_dir / image["id"]
    try:
        assert body.stalled.wait(60), "the upload never got under way"
        # One request thread per glance: ask its database, not its API, while the upload runs.
        helpers.wait_until(lambda: db_status(server.db_path, image["id"]) == "saving" and partial.exists(), 60,
                           "the image saving with data in the store")
        server.process.kill(signal.SIGKILL)  # glance-api dies mid-upload
    finally:
        body.release.set()
        uploader.join(60)
    server.stop()
    server.start()
    assert client.images.get(image["id"])["status"] == "saving"  # glance 33 never leaves it by itself

    result = run_copy(topology, store_map, image, region)
    assert result["outcome"] == "failed" and result["retryable"] is True, result
    reason = result["reason"]
    assert "is saving in this region since" in reason and f"<filesystem_store_datadir>/{image['id']}" in reason
    statement = f"UPDATE images SET status='queued' WHERE id='{image['id']}' AND status='saving'"
    assert statement in reason, reason

    # The operator does what the reason says; the next attempt completes the same image.
    partial.unlink()
    with sqlite3.connect(server.db_path) as db:
        db.execute(statement)
    result = run_copy(topology, store_map, image, region)
    assert result["outcome"] == "done", result
    record = client.images.get(image["id"])
    assert (record["status"], record["checksum"]) == ("active", image["checksum"])


def _ignore_errors(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:  # the glance-api it talks to is killed under it
        pass


def test_a_zero_byte_image_is_failed_with_its_reason_and_leaves_nothing_in_the_regions(
        topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = client.images.create(name="empty", disk_format="raw", container_format="bare")
    client.images.upload(image["id"], io.BytesIO(b""), image_size=0)
    assert client.images.get(image["id"])["status"] == "active"  # glance itself takes 0 bytes
    view = helpers.wait_states(topology, image["id"], "failed")
    for region in topology.region_names:
        assert "has 0 bytes" in view[region]["last_error"], view
        assert "glance refuses a location of size 0" in view[region]["last_error"], view
        with pytest.raises(Exception) as info:
            topology.cascaded[region].client().images.get(image["id"])
        assert getattr(info.value, "code", None) == 404, info.value
