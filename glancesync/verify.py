"""The one rule for "these are the same bytes", used by the agent and the coordinator alike.

Three places compare image bytes, all with :func:`verify`:

- the agent while receiving: the bytes that arrived against the cascading record;
- the agent after its upload: the regional record glance computed against the
  bytes it verified;
- the coordinator before registering a location: the regional record, read with
  that region's credentials, against the cascading record.

Each side is a :class:`Digest`: size, md5 ``checksum``, multihashes by algorithm
and, for a glance record, its status.  The rules (doc/verification.md says why):

1. a glance record must be ``active``; otherwise the check fails *retryably*
   (an upload still running, a copy deactivated for a while);
2. the expected side must carry a size and a content hash (``checksum`` or
   ``os_hash_value``); an image with neither can never be verified: non-retryable;
3. every value the expected side has must be on the actual side and equal: size,
   ``checksum``, and ``os_hash_value`` for each algorithm both sides have.  A value
   missing on the actual side is a mismatch, never a pass;
4. when the two sides hash with different algorithms (a region whose glance has
   another ``hashing_algorithm``), a third digest of the same bytes (``via``: the
   agent's report, hashed in both algorithms) must agree with each side in its
   algorithm; without it the multihash cannot be compared: a mismatch.

A legacy image without ``os_hash_value`` is thus compared on size and md5 alone,
and must have both.  A mismatch is not retryable unless the caller says so (the
agent retries bytes corrupted on the way; a region holding other bytes under the
image's id needs an operator).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from glancesync.exceptions import VerificationError

ACTIVE = "active"


@dataclass(frozen=True)
class Digest:
    """What is known of some bytes; ``status`` is set only for a glance record."""

    what: str
    size: int | None
    checksum: str | None
    hashes: Mapping[str, str] = field(default_factory=dict)
    status: str | None = None
    is_record: bool = False

    @classmethod
    def of_record(cls, record: Mapping[str, Any], what: str) -> Digest:
        """A glance image record: size, checksum, ``{os_hash_algo: os_hash_value}``, status."""
        return cls(what, record.get("size"), record.get("checksum") or None,
                   _hashes(record, "os_hash_algo", "os_hash_value"), record.get("status"), True)

    @classmethod
    def of_report(cls, report: Mapping[str, Any], what: str) -> Digest:
        """An agent's ``done``: the stream's hash and, when the region differs, the region's."""
        hashes = {**_hashes(report, "os_hash_algo", "os_hash_value"),
                  **_hashes(report, "region_hash_algo", "region_hash_value")}
        return cls(what, report.get("size"), report.get("checksum") or None, hashes)

    def with_hash(self, algo: str, value: str) -> Digest:
        return Digest(self.what, self.size, self.checksum, {**self.hashes, algo: value}, self.status,
                      self.is_record)


def _hashes(source: Mapping[str, Any], algo_key: str, value_key: str) -> dict[str, str]:
    algo, value = source.get(algo_key), source.get(value_key)
    # A value without its algorithm cannot be compared with anything: count it as absent.
    return {algo: value} if algo and value else {}


def verify(expected: Digest, actual: Digest, *, image_id: str, via: Digest | None = None,
           mismatch_retryable: bool = False) -> None:
    """Raise VerificationError unless ``actual`` holds the bytes ``expected`` describes."""

    def fail(detail: str, retryable: bool = mismatch_retryable) -> VerificationError:
        return VerificationError(image_id=image_id, detail=detail, retryable=retryable)

    for side in (expected, actual):
        if side.is_record and side.status != ACTIVE:
            raise fail(f"{side.what} is {side.status}, not {ACTIVE}", retryable=True)
    if expected.size is None or not (expected.checksum or expected.hashes):
        lacks = "no size" if expected.size is None else "neither checksum nor os_hash_value"
        raise fail(f"{expected.what} has {lacks}: its bytes cannot be verified", retryable=False)
    if actual.size != expected.size:
        raise fail(_mismatch("size", expected, actual, expected.size, actual.size))
    if expected.checksum and actual.checksum != expected.checksum:
        raise fail(_mismatch("checksum", expected, actual, expected.checksum, actual.checksum))
    if not expected.hashes:
        return  # legacy image: size and md5, both checked above
    common = sorted(expected.hashes.keys() & actual.hashes.keys())
    for algo in common:
        if actual.hashes[algo] != expected.hashes[algo]:
            raise fail(_mismatch(f"os_hash_value ({algo})", expected, actual, expected.hashes[algo],
                                 actual.hashes[algo]))
    if not common:
        _bridge(expected, actual, via, fail)


def _bridge(expected: Digest, actual: Digest, via: Digest | None,
            fail: Callable[[str], VerificationError]) -> None:
    """Different algorithms on each side: ``via`` must match each side in that side's algorithm."""
    if not actual.hashes:
        raise fail(f"os_hash_value mismatch: {actual.what} has none, {expected.what} has {_algos(expected)}")
    theirs = via.hashes if via else {}
    pairs = [(want, have) for want in sorted(expected.hashes) for have in sorted(actual.hashes)]
    for want, have in pairs:
        if theirs.get(want) == expected.hashes[want] and theirs.get(have) == actual.hashes[have]:
            return
    want, have = pairs[0]
    if via is None or want not in theirs or have not in theirs:
        raise fail(f"os_hash_value cannot be compared: {expected.what} uses {want}, {actual.what} uses {have}, "
                   f"and {via.what if via else 'nothing'} gives no value in both to link them")
    if theirs[want] != expected.hashes[want]:
        raise fail(_mismatch(f"os_hash_value ({want})", expected, via, expected.hashes[want], theirs[want]))
    raise fail(_mismatch(f"os_hash_value ({have})", via, actual, theirs[have], actual.hashes[have]))


def _algos(digest: Digest) -> str:
    return "+".join(sorted(digest.hashes)) or "no os_hash_value"


def _mismatch(name: str, expected: Digest, actual: Digest, want: Any, got: Any) -> str:
    return f"{name} mismatch: {actual.what} has {got!r}, {expected.what} has {want!r}"
