"""glancesync.verify: every rule, and every value missing on either side."""

from __future__ import annotations

import pytest

from glancesync.exceptions import VerificationError
from glancesync.verify import Digest, verify

MD5 = "c" * 32
SHA512 = "5" * 128
SHA256 = "2" * 64


def record(**overrides) -> dict:
    rec = {"id": "img", "status": "active", "size": 10, "checksum": MD5, "os_hash_algo": "sha512",
           "os_hash_value": SHA512}
    rec.update(overrides)
    return rec


def cascading(**overrides) -> Digest:
    return Digest.of_record(record(**overrides), "cascading image")


def regional(**overrides) -> Digest:
    return Digest.of_record(record(**overrides), "RegionA image")


def refused(expected: Digest, actual: Digest, **kwargs) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify(expected, actual, image_id="img", **kwargs)
    return info.value


def test_identical_records_pass() -> None:
    verify(cascading(), regional(), image_id="img")


def test_a_stream_digest_is_compared_without_a_status() -> None:
    stream = Digest("received bytes", 10, MD5, {"sha512": SHA512})
    verify(cascading(), stream, image_id="img")


@pytest.mark.parametrize("status", ["queued", "saving", "deactivated", "killed", None])
def test_a_record_that_is_not_active_fails_retryably(status) -> None:
    error = refused(cascading(), regional(status=status))
    assert error.retryable is True
    assert f"RegionA image is {status}, not active" in str(error)


def test_the_expected_record_must_be_active_too() -> None:
    error = refused(cascading(status="deactivated"), regional())
    assert "cascading image is deactivated" in str(error) and error.retryable


@pytest.mark.parametrize(
    "field, value",
    [("size", 11), ("size", None), ("checksum", "d" * 32), ("checksum", None),
     ("os_hash_value", "6" * 128), ("os_hash_value", None)],
)
def test_a_value_that_differs_or_is_missing_on_the_actual_side_is_a_mismatch(field, value) -> None:
    error = refused(cascading(), regional(**{field: value}))
    assert error.retryable is False
    assert f"{field}" in str(error) and "mismatch" in str(error)
    assert "RegionA image" in str(error) and "cascading image" in str(error)


def test_mismatches_can_be_retryable_for_bytes_in_transit() -> None:
    stream = Digest("received bytes", 10, "d" * 32, {"sha512": SHA512})
    error = refused(cascading(), stream, mismatch_retryable=True)
    assert error.retryable is True and "checksum mismatch: received bytes has 'ddd" in str(error)


def test_legacy_image_without_multihash_is_compared_on_size_and_md5() -> None:
    legacy = cascading(os_hash_algo=None, os_hash_value=None)
    verify(legacy, regional(), image_id="img")
    verify(legacy, Digest("received bytes", 10, MD5, {}), image_id="img")
    assert "checksum mismatch" in str(refused(legacy, regional(checksum="d" * 32)))
    assert "checksum mismatch" in str(refused(legacy, regional(checksum=None)))
    assert "size mismatch" in str(refused(legacy, regional(size=9)))


@pytest.mark.parametrize("overrides", [
    {"checksum": None, "os_hash_value": None},
    {"checksum": None, "os_hash_algo": None, "os_hash_value": None},
    {"size": None},
])
def test_an_image_with_nothing_to_compare_cannot_be_verified(overrides) -> None:
    error = refused(cascading(**overrides), regional())
    assert error.retryable is False and "cannot be verified" in str(error)


def test_a_hash_value_without_its_algorithm_counts_as_missing() -> None:
    assert Digest.of_record(record(os_hash_algo=None), "x").hashes == {}
    error = refused(cascading(), regional(os_hash_algo=None))
    assert "os_hash_value mismatch: RegionA image has none" in str(error)


def test_without_md5_on_the_expected_side_the_multihash_decides() -> None:
    verify(cascading(checksum=None), regional(), image_id="img")
    assert "os_hash_value (sha512) mismatch" in str(refused(cascading(checksum=None),
                                                             regional(os_hash_value="6" * 128)))


# -- a region whose glance uses another hashing_algorithm ---------------------------


def sha256_region(**overrides) -> Digest:
    return regional(**{"os_hash_algo": "sha256", "os_hash_value": SHA256, **overrides})


def report(**overrides) -> Digest:
    body = {"size": 10, "checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": SHA512,
            "region_hash_algo": "sha256", "region_hash_value": SHA256}
    body.update(overrides)
    return Digest.of_report(body, "agent report")


def test_another_algorithm_is_linked_by_the_agents_report() -> None:
    verify(cascading(), sha256_region(), image_id="img", via=report())


def test_another_algorithm_without_a_report_cannot_be_compared() -> None:
    error = refused(cascading(), sha256_region())
    assert "cannot be compared" in str(error) and "sha512" in str(error) and "sha256" in str(error)
    assert error.retryable is False


@pytest.mark.parametrize("overrides", [{"region_hash_algo": None}, {"region_hash_value": None}, {}])
def test_a_report_without_the_regions_hash_is_a_mismatch(overrides) -> None:
    via = report(**overrides) if overrides else Digest.of_report(
        {"size": 10, "checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": SHA512}, "old agent report")
    error = refused(cascading(), sha256_region(), via=via)
    assert "cannot be compared" in str(error) and error.retryable is False


def test_a_report_whose_region_hash_differs_from_the_region_is_a_mismatch() -> None:
    error = refused(cascading(), sha256_region(), via=report(region_hash_value="3" * 64))
    assert "os_hash_value (sha256) mismatch: RegionA image has '222" in str(error)


def test_a_report_whose_cascading_hash_differs_is_a_mismatch() -> None:
    error = refused(cascading(), sha256_region(), via=report(os_hash_value="6" * 128))
    assert "os_hash_value (sha512) mismatch: agent report has '666" in str(error)


def test_another_algorithm_still_needs_md5_and_size() -> None:
    assert "checksum mismatch" in str(refused(cascading(), sha256_region(checksum="d" * 32), via=report()))
    assert "size mismatch" in str(refused(cascading(), sha256_region(size=11), via=report()))


def test_a_digest_hashed_in_both_algorithms_needs_no_report() -> None:
    both = Digest("verified file", 10, MD5, {"sha512": SHA512, "sha256": SHA256})
    verify(both, sha256_region(), image_id="img")
    assert "os_hash_value (sha256) mismatch" in str(refused(both, sha256_region(os_hash_value="3" * 64)))


def test_of_report_reads_both_hashes() -> None:
    assert report().hashes == {"sha512": SHA512, "sha256": SHA256}
    assert report().status is None and not report().is_record
