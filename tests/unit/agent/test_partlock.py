"""agent.partlock: one attempt at a time per .part, across processes, and never stale after a kill -9."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from agent import partlock
from agent import task as task_mod
from glancesync.exceptions import TransferError
from glancesync.storemap import GlanceEndpoint, Region, SshStore, StoreMap

IMAGE_ID = "img-1"


def hold_and_write(part: str, ready: object) -> None:
    """Another attempt (a worker still finishing): holds the lock and writes, until killed."""
    with partlock.hold(part, IMAGE_ID):
        with open(part, "ab") as handle:
            handle.write(b"first attempt's bytes")
        ready.set()
        time.sleep(600)


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of ``<tmp>/img-1.part``."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    part = str(tmp_path / f"{IMAGE_ID}.part")
    proc = ctx.Process(target=hold_and_write, args=(part, ready), daemon=True)
    proc.start()
    assert ready.wait(60), "the holding process never took the lock"
    yield part, proc
    proc.kill()
    proc.join(30)


def test_a_second_attempt_is_refused_while_the_first_holds_the_part(holder):
    part, proc = holder
    with pytest.raises(TransferError) as info:
        with partlock.hold(part, IMAGE_ID):
            pytest.fail("two attempts held one .part")
    assert info.value.retryable is True
    assert f"another attempt still writes {part}" in str(info.value)
    # Once the holder is gone (even by SIGKILL) the kernel has dropped its lock.
    proc.kill()
    proc.join(30)
    with partlock.hold(part, IMAGE_ID):
        assert os.path.exists(partlock.lock_path(part))
    assert not os.path.exists(partlock.lock_path(part))


def worker_settings(work_dir) -> task_mod.WorkerSettings:
    store = SshStore("h", 22, "u", "k", "kh", "/store")
    region = Region("RegionA", GlanceEndpoint(url="http://127.0.0.1:1"), str(work_dir))
    return task_mod.WorkerSettings(StoreMap("x.yaml", store, {"RegionA": region}), "RegionA", ssh_timeout=1.0)


def test_a_copy_attempt_on_a_held_part_fails_retryable_and_never_writes(holder, tmp_path, monkeypatch):
    part, _ = holder
    before = open(part, "rb").read()
    fetched: list[str] = []
    monkeypatch.setattr(task_mod.glance, "make_client", lambda endpoint: object())
    monkeypatch.setattr(task_mod.glance, "get_image", lambda client, image_id, endpoint: None)
    monkeypatch.setattr(task_mod.transfer, "fetch", lambda *args, **kwargs: fetched.append(args[3]))
    image = {"id": IMAGE_ID, "status": "active", "size": 10, "checksum": "0" * 32}
    task = {"task_id": "t", "attempt": 2, "kind": "copy", "image_id": IMAGE_ID, "region": "RegionA",
            "image": image, "source": {"type": "sftp", "path": "/store/img-1"}}
    result = task_mod.run_task(task, worker_settings(tmp_path), lambda d, t: None)
    assert result["outcome"] == "failed" and result["retryable"] is True
    assert f"another attempt still writes {part}" in result["reason"]
    assert fetched == [] and open(part, "rb").read() == before


def test_a_delete_waits_for_a_copy_attempt_that_holds_the_part(holder, tmp_path):
    part, _ = holder
    task = {"task_id": "t", "attempt": 1, "kind": "delete", "image_id": IMAGE_ID, "region": "RegionA", "image": {}}
    result = task_mod.run_task(task, worker_settings(tmp_path), lambda d, t: None)
    assert result["outcome"] == "failed" and result["retryable"] is True
    assert "another attempt still writes" in result["reason"] and os.path.exists(part)


def test_a_lock_file_replaced_meanwhile_is_not_trusted(tmp_path, monkeypatch):
    """Whoever opened the lock file just before its holder removed it must not count as holding it."""
    part = str(tmp_path / f"{IMAGE_ID}.part")
    real_flock = partlock.fcntl.flock
    replaced: list[int] = []

    def flock_after_release(fd, op):
        if not replaced:  # the previous holder removes the file between our open and our flock
            replaced.append(fd)
            os.unlink(partlock.lock_path(part))
        return real_flock(fd, op)

    monkeypatch.setattr(partlock.fcntl, "flock", flock_after_release)
    with partlock.hold(part, IMAGE_ID):
        held = os.stat(partlock.lock_path(part)).st_ino
    assert replaced and held  # it opened the file again and locked the one the name points to
