"""agent.upload: what an existing regional image means, and the check after our upload (glancesync.verify)."""

from __future__ import annotations

import hashlib

import pytest
from glanceclient import exc as glance_exc

from agent import upload
from glancesync import verify as check
from glancesync.exceptions import GlanceError, VerificationError

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

    def get(self, image_id):
        if image_id not in self.records:
            raise glance_exc.HTTPNotFound("no image")
        return dict(self.records[image_id])

    def create(self, id, **props):
        self.records[id] = {"id": id, "status": "queued", "size": None, "checksum": None,
                            "os_hash_algo": None, "os_hash_value": None, **props}

    def upload(self, image_id, handle, image_size=None):
        self.uploads += 1
        data = self.stored if self.stored is not None else handle.read()
        self.data_of[image_id] = data
        self.records[image_id].update(digest_record(data, self.algo))

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
