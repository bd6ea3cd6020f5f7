"""agent.upload: what an existing regional image means, and the check after our upload (glancesync.verify)."""

from __future__ import annotations

import hashlib

import pytest
from glanceclient import exc as glance_exc

from agent import stream, upload
from glancesync import verify as check
from glancesync.exceptions import GlanceError, GlanceSyncError, VerificationError

DATA = b"regional bytes " * 1000
OTHER = b"forged bytes!! " * 1000


def digest_record(data: bytes, algo: str = "sha512", **extra) -> dict:
    record = {"id": "img-1", "status": "active", "size": len(data), "checksum": hashlib.md5(data).hexdigest(),
              "os_hash_algo": algo, "os_hash_value": hashlib.new(algo, data).hexdigest()}
    record.update(extra)
    return record


CASCADING = digest_record(DATA, name="cirros", disk_format="raw", container_format="bare")


class FakeImages:
    """A regional glance: computes checksum and multihash (``algo``) on upload, like glance."""

    def __init__(self, algo: str = "sha512", stored: bytes | None = None) -> None:
        self.algo = algo
        self.records: dict[str, dict] = {}
        self.data_of: dict[str, bytes] = {}
        self.uploads = 0
        self.stored = stored  # when set, glance "stores" these bytes whatever it was sent
        self.received: dict[str, bytearray] = {}
        self.largest_piece = 0
        self.refuse: Exception | None = None  # raised by upload, the image left queued

    def get(self, image_id):
        if image_id not in self.records:
            raise glance_exc.HTTPNotFound("no image")
        return dict(self.records[image_id])

    def create(self, id, **props):
        self.records[id] = {"id": id, "status": "queued", "size": None, "checksum": None,
                            "os_hash_algo": None, "os_hash_value": None, **props}

    def upload(self, image_id, handle, image_size=None):
        """Reads the body as glanceclient does; an aborted body leaves the image queued, as glance does."""
        self.uploads += 1
        record = self.records[image_id]
        if self.refuse is not None:
            raise self.refuse
        received = self.received[image_id] = bytearray()
        try:
            while chunk := handle.read(1024 * 1024):
                received += chunk
                self.largest_piece = max(self.largest_piece, len(chunk))
        except BaseException:
            record["status"] = "queued"
            raise
        data = self.stored if self.stored is not None else bytes(received)
        self.data_of[image_id] = data
        record.update(digest_record(data, self.algo))

    def data(self, image_id):
        data = self.data_of[image_id]
        return iter([data[i:i + 4096] for i in range(0, len(data), 4096)])


class FakeClient:
    def __init__(self, **kwargs) -> None:
        self.images = FakeImages(**kwargs)


def verified_file(tmp_path, data: bytes = DATA) -> tuple[str, check.Digest]:
    path = tmp_path / "img-1.part"
    path.write_bytes(data)
    digest = check.Digest("received bytes", len(data), hashlib.md5(data).hexdigest(),
                          {"sha512": hashlib.sha512(data).hexdigest()})
    return str(path), digest


# -- existing_copy ----------------------------------------------------------------


@pytest.mark.parametrize(
    "regional, action",
    [(None, "create"), ({"status": "queued"}, "upload"), (digest_record(DATA), "done"),
     (digest_record(DATA, "sha256"), "rehash")],
)
def test_existing_copy_decisions(regional, action):
    assert upload.existing_copy(regional, CASCADING, "ep") == action


@pytest.mark.parametrize(
    "regional, retryable, words",
    [({"status": "killed"}, False, "killed"), ({"status": "deleted"}, False, "deleted"),
     ({"status": "saving"}, True, "saving"),
     (digest_record(DATA, status="deactivated"), True, "deactivated, not active"),
     (digest_record(OTHER), False, "checksum mismatch"),
     (dict(digest_record(DATA), os_hash_value="0" * 128), False, "os_hash_value (sha512) mismatch"),
     (dict(digest_record(DATA), os_hash_value=None), False, "has none"),
     (dict(digest_record(DATA), checksum=None), False, "checksum mismatch"),
     (dict(digest_record(DATA), size=None), False, "size mismatch")],
)
def test_existing_copy_refusals(regional, retryable, words):
    with pytest.raises((GlanceError, VerificationError)) as info:
        upload.existing_copy(regional, CASCADING, "ep")
    assert info.value.retryable is retryable
    assert words in str(info.value)


def test_existing_copy_of_a_legacy_image_compares_size_and_md5():
    legacy = dict(CASCADING, os_hash_algo=None, os_hash_value=None)
    assert upload.existing_copy(digest_record(DATA), legacy, "ep") == "done"
    with pytest.raises(VerificationError, match="checksum mismatch"):
        upload.existing_copy(digest_record(OTHER), legacy, "ep")


# -- register: upload, then glance's record against what we verified -------------------


def test_register_uploads_and_checks_what_glance_computed(tmp_path):
    client = FakeClient()
    path, verified = verified_file(tmp_path)
    result = upload.register(client, CASCADING, path, verified, "ep")
    assert client.images.uploads == 1 and client.images.records["img-1"]["status"] == "active"
    assert result.hashes == verified.hashes
    assert not (tmp_path / "img-1.part").exists()


def test_glance_holding_other_bytes_after_upload_is_not_registered_and_not_retried(tmp_path):
    client = FakeClient(stored=OTHER[: len(DATA)])
    path, verified = verified_file(tmp_path)
    with pytest.raises(VerificationError) as info:
        upload.register(client, CASCADING, path, verified, "ep")
    assert "checksum mismatch: regional image has" in str(info.value)
    assert info.value.retryable is False
    assert not (tmp_path / "img-1.part").exists()


def test_check_uploaded_rehashes_the_file_in_the_regions_algorithm(tmp_path):
    client = FakeClient(algo="sha256")
    path, verified = verified_file(tmp_path)
    result = upload.register(client, CASCADING, path, verified, "ep")
    assert result.hashes == {"sha512": hashlib.sha512(DATA).hexdigest(), "sha256": hashlib.sha256(DATA).hexdigest()}


def test_check_uploaded_in_another_algorithm_still_catches_other_bytes(tmp_path):
    client = FakeClient(algo="sha256", stored=OTHER[: len(DATA)])
    path, verified = verified_file(tmp_path)
    with pytest.raises(VerificationError, match="checksum mismatch"):
        upload.register(client, CASCADING, path, verified, "ep")


def test_a_record_without_multihash_after_upload_is_a_mismatch(tmp_path):
    path, verified = verified_file(tmp_path)
    regional = dict(digest_record(DATA), os_hash_algo=None, os_hash_value=None)
    with pytest.raises(VerificationError, match="os_hash_value mismatch: regional image has none"):
        upload.check_uploaded(regional, verified, path, "img-1", "ep")


def test_a_vanished_image_after_upload_is_retryable(tmp_path):
    path, verified = verified_file(tmp_path)
    with pytest.raises(GlanceError) as info:
        upload.check_uploaded(None, verified, path, "img-1", "ep")
    assert info.value.retryable and "vanished" in str(info.value)


# -- rehash_regional: an earlier attempt made the copy in another algorithm -------------------


def test_rehash_regional_hashes_the_regional_bytes_in_both_algorithms():
    client = FakeClient(algo="sha256")
    client.images.records["img-1"] = digest_record(DATA, "sha256")
    client.images.data_of["img-1"] = DATA
    digest = upload.rehash_regional(client, CASCADING, client.images.records["img-1"], "ep")
    assert digest.hashes == {"sha512": CASCADING["os_hash_value"], "sha256": hashlib.sha256(DATA).hexdigest()}


def test_rehash_regional_of_other_bytes_is_a_mismatch():
    client = FakeClient(algo="sha256")
    forged = OTHER[: len(DATA)]
    # A record that claims the cascading md5, over bytes that are not the image's.
    client.images.records["img-1"] = dict(digest_record(forged, "sha256"), checksum=CASCADING["checksum"])
    client.images.data_of["img-1"] = forged
    with pytest.raises(VerificationError) as info:
        upload.rehash_regional(client, CASCADING, client.images.records["img-1"], "ep")
    assert "mismatch: regional bytes read back has" in str(info.value) and not info.value.retryable


# -- the upload hashes what it sends and holds back the last piece ---------------------


BIG = bytes(range(256)) * 1000 + b"tail"  # several upload pieces, the last one short
BIG_IMAGE = digest_record(BIG, name="big", disk_format="raw", container_format="bare")


def part_with(tmp_path, data: bytes) -> tuple[str, check.Digest]:
    """A .part holding ``data`` whose fetch was verified as the cascading image's bytes (BIG)."""
    path, _ = verified_file(tmp_path, data)
    return path, verified_file(tmp_path / "..", BIG)[1]


def test_the_upload_sends_the_file_in_pieces_and_reports_what_it_hashed(tmp_path):
    client = FakeClient()
    path, verified = part_with(tmp_path, BIG)
    result = upload.register(client, BIG_IMAGE, path, verified, "ep")
    assert bytes(client.images.received["img-1"]) == BIG
    assert client.images.largest_piece == stream.UPLOAD_PIECE == 64 * 1024
    assert client.images.records["img-1"]["status"] == "active"
    assert (result.what, result.size, result.checksum) == ("bytes being uploaded", len(BIG), BIG_IMAGE["checksum"])
    assert result.hashes == {"sha512": BIG_IMAGE["os_hash_value"]}


@pytest.mark.parametrize(
    "data, words",
    [(BIG[:-1] + b"X", "checksum mismatch"),  # same size, other last byte
     (b"Y" + BIG[1:], "checksum mismatch"),  # other first byte: already sent, still never completed
     (BIG + b"more", "size mismatch"),  # longer: never sent beyond the expected size
     (BIG[:-100], "size mismatch")],  # shorter
)
def test_a_part_with_other_bytes_is_held_back_and_the_image_stays_queued(tmp_path, data, words):
    """The fetch verified the stream, but the file now holds other bytes: the copy never becomes active."""
    client = FakeClient()
    path, verified = part_with(tmp_path, data)
    with pytest.raises(VerificationError) as info:
        upload.register(client, BIG_IMAGE, path, verified, "ep")
    assert words in str(info.value) and "bytes being uploaded" in str(info.value)
    assert info.value.retryable is True
    record = client.images.records["img-1"]
    assert record["status"] == "queued" and record["checksum"] is None
    received = bytes(client.images.received["img-1"])
    assert len(received) < len(BIG) and data.startswith(received)  # the last piece was never sent
    assert not (tmp_path / "img-1.part").exists()


def test_a_good_attempt_after_a_held_back_one_completes_the_same_image(tmp_path):
    client = FakeClient()
    path, verified = part_with(tmp_path, BIG[:-1] + b"X")
    with pytest.raises(VerificationError):
        upload.register(client, BIG_IMAGE, path, verified, "ep")
    path, verified = part_with(tmp_path, BIG)
    upload.register(client, BIG_IMAGE, path, verified, "ep")
    assert client.images.records["img-1"]["status"] == "active" and client.images.uploads == 2


@pytest.mark.parametrize("refusal", [glance_exc.HTTPBadRequest("Size exceeds: expected 1 bytes, got 2 bytes"),
                                     glance_exc.HTTPConflict("conflict"), glance_exc.HTTPOverLimit("quota")])
def test_an_upload_refused_while_the_image_stays_queued_is_retried(tmp_path, refusal):
    client = FakeClient()
    client.images.refuse = refusal
    path, verified = part_with(tmp_path, BIG)
    with pytest.raises(GlanceError) as info:
        upload.register(client, BIG_IMAGE, path, verified, "ep")
    assert info.value.retryable is True
    assert "still queued" in str(info.value) and type(refusal).__name__ in str(info.value)
    assert (tmp_path / "img-1.part").exists()  # verified bytes: kept for the retry


def test_an_upload_refused_with_the_image_killed_is_final(tmp_path):
    client = FakeClient()

    def refuse_and_kill(image_id, handle, image_size=None):
        client.images.records[image_id]["status"] = "killed"
        raise glance_exc.HTTPBadRequest("bad data")

    client.images.upload = refuse_and_kill
    path, verified = part_with(tmp_path, BIG)
    with pytest.raises(GlanceError) as info:
        upload.register(client, BIG_IMAGE, path, verified, "ep")
    assert info.value.retryable is False and "still queued" not in str(info.value)


def test_a_saving_image_says_what_an_operator_does(tmp_path):
    with pytest.raises(GlanceError) as info:
        upload.existing_copy({"status": "saving", "updated_at": "2026-11-30T10:00:00Z"}, CASCADING, "ep")
    reason = str(info.value)
    assert info.value.retryable is True and "since 2026-11-30T10:00:00Z" in reason
    assert "<filesystem_store_datadir>/img-1" in reason
    assert "UPDATE images SET status='queued' WHERE id='img-1' AND status='saving'" in reason


def test_a_zero_byte_image_is_refused_with_its_reason():
    with pytest.raises(GlanceSyncError) as info:
        upload.refuse_empty(dict(CASCADING, size=0))
    assert info.value.retryable is False and "has 0 bytes" in str(info.value)
    upload.refuse_empty(CASCADING)  # any other size passes
