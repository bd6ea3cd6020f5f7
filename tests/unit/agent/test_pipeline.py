"""agent.pipeline: the regional upload runs while the fetch still writes the .part.

The fetch is a stand-in for transfer.fetch that writes the file in two halves and,
between them, waits until the (fake) regional glance has received bytes: the
copy can only finish if the upload started before the fetch ended.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
from glanceclient import exc as glance_exc

from agent import pipeline, stream, transfer
from glancesync.exceptions import GlanceError, VerificationError
from tests.unit.agent.test_upload import FakeClient, FakeImages, digest_record

DATA = bytes(range(256)) * 4096 + b"end"  # 1 MiB and 3 bytes
IMAGE = digest_record(DATA, name="big", disk_format="raw", container_format="bare")
HALF = len(DATA) // 2
SENT_OF_HALF = HALF // stream.UPLOAD_PIECE * stream.UPLOAD_PIECE  # whole pieces only while the fetch runs


class WatchedImages(FakeImages):
    """A regional glance that says when it has received the whole pieces of the first ``HALF`` bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.got_half = threading.Event()

    def upload(self, image_id, handle, image_size=None):
        class Watch:
            name = getattr(handle, "name", "body")

            def read(_self, size=-1):
                chunk = handle.read(size)
                if len(self.received.get(image_id, b"")) + len(chunk) >= SENT_OF_HALF:
                    self.got_half.set()
                return chunk

        return super().upload(image_id, Watch(), image_size)


def two_halves(glance: WatchedImages, order: list[str], data: bytes = DATA, fail: Exception | None = None):
    """transfer.fetch writing ``data`` in two halves, the second only once glance has the first."""

    def fetch(store, image, source, dest, progress, timeout=30.0, options=None, on_start=None):
        with open(dest, "ab") as out:
            on_start()
            out.write(data[:HALF])
            out.flush()
            progress(HALF, len(data))
            assert glance.got_half.wait(30), "the upload never read the first half while the fetch ran"
            order.append("glance had the first half before the fetch ended")
            out.write(data[HALF:])
        progress(len(data), len(data))
        if fail is not None:
            raise fail
        order.append("fetch verified")
        return transfer.Fetched(dest, len(DATA), IMAGE["checksum"], "sha512", IMAGE["os_hash_value"], 0.1)

    return fetch


def job_for(tmp_path, client) -> pipeline.Copy:
    return pipeline.Copy(store=None, image=dict(IMAGE), source="/store/img-1", dest=str(tmp_path / "img-1.part"),
                         client=client, endpoint="ep", fetch=transfer.FetchOptions(idle_timeout=60.0),
                         ssh_timeout=5.0)


def test_the_upload_starts_before_the_fetch_ends_and_the_image_becomes_active(tmp_path, monkeypatch):
    client, order, phases, reports = FakeClient(), [], [], []
    client.images = WatchedImages()
    monkeypatch.setattr(transfer, "fetch", two_halves(client.images, order))
    digest, algo = pipeline.copy(job_for(tmp_path, client), lambda d, t: reports.append((phases[-1], d)),
                                 phases.append)
    assert order == ["glance had the first half before the fetch ended", "fetch verified"]
    assert bytes(client.images.received["img-1"]) == DATA
    assert client.images.records["img-1"]["status"] == "active"
    assert (algo, digest.checksum, digest.size) == ("sha512", IMAGE["checksum"], len(DATA))
    assert phases == ["fetching", "uploading", "registering"]
    assert reports[0] == ("fetching", HALF) and reports[-1] == ("registering", len(DATA))
    assert not (tmp_path / "img-1.part").exists()


def test_a_corrupt_source_found_at_the_end_of_the_fetch_never_becomes_active(tmp_path, monkeypatch):
    client, order = FakeClient(), []
    client.images = WatchedImages()
    bad = b"X" + DATA[1:]
    mismatch = VerificationError(image_id="img-1", detail="checksum mismatch: received bytes ...", retryable=True)
    monkeypatch.setattr(transfer, "fetch", two_halves(client.images, order, bad, fail=mismatch))
    with pytest.raises(VerificationError, match="received bytes"):
        pipeline.copy(job_for(tmp_path, client), lambda d, t: None, lambda p: None)
    assert order == ["glance had the first half before the fetch ended"]  # the upload was under way
    record = client.images.records["img-1"]
    assert record["status"] == "queued" and record["checksum"] is None
    assert len(client.images.received["img-1"]) < len(DATA)


def test_an_upload_that_fails_stops_the_fetch_and_its_reason_is_the_attempts(tmp_path, monkeypatch):
    client = FakeClient()

    def deleted_here(id, **props):
        raise glance_exc.HTTPConflict("deleted")

    client.images.create = deleted_here  # the id was deleted in this region: final
    fetched: list[int] = []

    def fetch(store, image, source, dest, progress, timeout=30.0, options=None, on_start=None):
        with open(dest, "ab") as out:
            on_start()
            for offset in range(0, len(DATA), 4096):
                out.write(DATA[offset:offset + 4096])
                fetched.append(offset)
                progress(offset + 4096, len(DATA))
                if offset >= HALF:
                    assert upload_over.wait(30), "the upload never ended"
        raise AssertionError("the fetch ran to its end")

    upload_over = threading.Event()
    real_run = pipeline._Upload._run

    def run(self):
        try:
            real_run(self)
        finally:
            upload_over.set()

    monkeypatch.setattr(transfer, "fetch", fetch)
    monkeypatch.setattr(pipeline._Upload, "_run", run)
    with pytest.raises(GlanceError, match="was deleted in this region") as info:
        pipeline.copy(job_for(tmp_path, client), lambda d, t: None, lambda p: None)
    assert info.value.retryable is False
    assert len(fetched) < len(DATA) // 4096
    assert not (tmp_path / "img-1.part").exists()


def test_the_upload_s_own_failure_is_the_reason_even_when_the_fetch_then_fails_too(tmp_path, monkeypatch):
    """The upload removed the .part of an id deleted in the region; the fetch ends with an empty file."""
    client = FakeClient()
    client.images.create = lambda id, **props: (_ for _ in ()).throw(glance_exc.HTTPConflict("deleted"))
    upload_over = threading.Event()
    real_run = pipeline._Upload._run
    monkeypatch.setattr(pipeline._Upload, "_run", lambda self: (real_run(self), upload_over.set()))

    def fetch(store, image, source, dest, progress, timeout=30.0, options=None, on_start=None):
        open(dest, "ab").close()
        on_start()
        assert upload_over.wait(30)
        with open(dest, "ab") as out:  # sftp writing on, into a new file at the same path
            out.write(DATA[:4096])
        raise VerificationError(image_id="img-1", detail="size mismatch: received bytes has 0", retryable=True)

    monkeypatch.setattr(transfer, "fetch", fetch)
    with pytest.raises(GlanceError, match="was deleted in this region") as info:
        pipeline.copy(job_for(tmp_path, client), lambda d, t: None, lambda p: None)
    assert info.value.retryable is False
    assert not (tmp_path / "img-1.part").exists()


def test_a_fetch_that_fails_before_its_bytes_start_creates_nothing_in_the_region(tmp_path, monkeypatch):
    client = FakeClient()

    def fetch(store, image, source, dest, progress, timeout=30.0, options=None, on_start=None):
        raise transfer.TransferError(image_id="img-1", detail="cannot connect")

    monkeypatch.setattr(transfer, "fetch", fetch)
    with pytest.raises(transfer.TransferError, match="cannot connect"):
        pipeline.copy(job_for(tmp_path, client), lambda d, t: None, lambda p: None)
    assert client.images.records == {}


def test_glance_taking_no_byte_for_the_idle_timeout_cancels_the_upload(tmp_path, monkeypatch):
    part = tmp_path / "img-1.part"
    part.write_bytes(DATA)
    client = FakeClient()
    client.images.create("img-1")
    follow = pipeline.upload.Follow(stream.Arrival.complete(
        transfer.Fetched(str(part), len(DATA), IMAGE["checksum"], "sha512", IMAGE["os_hash_value"], 0.1).digest()),
        ["sha512"])
    side = pipeline._Upload(job_for(tmp_path, client), follow)
    stuck = threading.Event()
    body = stream.FollowingBody(open(part, "rb"), follow.arrival.digest, ["sha512"], "img-1", follow.arrival,
                                clock=lambda: 0.0)
    follow.body = body
    side.thread = threading.Thread(target=stuck.wait, args=(30,), daemon=True)
    side.thread.start()
    side.wait(idle_timeout=10.0, clock=lambda: 11.0)  # glance last asked for a piece 11 s ago
    stuck.set()
    assert "glance took no byte for 10 s" in str(side.error)
    with pytest.raises(stream.Aborted):
        body.read()
    body.handle.close()


def test_the_part_is_relayed_once_its_bytes_are_on_their_way_and_a_failed_relay_only_logs(
        tmp_path, monkeypatch, caplog):
    client, order, relayed = FakeClient(), [], []
    client.images = WatchedImages()
    monkeypatch.setattr(transfer, "fetch", two_halves(client.images, order))
    job = dataclasses.replace(job_for(tmp_path, client), relay=lambda path: relayed.append((path, Path(path).exists())))
    pipeline.copy(job, lambda d, t: None, lambda p: None)
    assert relayed == [(str(tmp_path / "img-1.part"), True)]

    def refused(path):
        raise OSError(18, "Invalid cross-device link")

    client.images = WatchedImages()
    monkeypatch.setattr(transfer, "fetch", two_halves(client.images, order))
    digest, _ = pipeline.copy(dataclasses.replace(job_for(tmp_path, client), relay=refused), lambda d, t: None,
                              lambda p: None)
    assert digest.size == len(DATA)  # the copy itself is not hurt
    assert "cannot be relayed to other regions" in caplog.text
