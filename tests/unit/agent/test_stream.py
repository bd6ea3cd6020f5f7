"""agent.stream: the upload body follows a growing .part and holds back its last piece.

The fetch is played by a scripted Arrival: each time the body waits for news, the
next step of the script runs (bytes land, the fetch ends or fails), and the test
records how far the body had got at that moment, so the assertions are on the
observed order, never on timing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from agent import stream
from glancesync import verify as check
from glancesync.exceptions import TransferError, VerificationError

PIECE = stream.UPLOAD_PIECE
DATA = bytes(range(256)) * 1200 + b"tail"  # 307204 bytes: four full pieces and a short last one
EXPECTED = check.Digest("cascading image", len(DATA), hashlib.md5(DATA).hexdigest(),
                        {"sha512": hashlib.sha512(DATA).hexdigest()})
FETCHED = check.Digest("received bytes", EXPECTED.size, EXPECTED.checksum, EXPECTED.hashes)


class ScriptedArrival(stream.Arrival):
    """An Arrival whose fetch moves one step each time the body waits; ``seen`` is the body's ``sent`` then."""

    def __init__(self, steps: list[Callable[[], None]]) -> None:
        super().__init__()
        self.steps = list(steps)
        self.seen: list[int] = []
        self.body: stream.FollowingBody | None = None

    def wait(self, seen: int, timeout: float) -> int:
        assert self.steps, "the body waited again after the fetch script ended"
        self.seen.append(self.body.sent)
        self.steps.pop(0)()
        return self.news


def body_for(path, arrival: ScriptedArrival, clock=None, idle=300.0) -> stream.FollowingBody:
    handle = open(path, "rb")  # noqa: SIM115 - closed by the test's read_all
    body = stream.FollowingBody(handle, EXPECTED, ["sha512"], "img-1", arrival, idle,
                                **({"clock": clock} if clock else {}))
    arrival.body = body
    return body


def read_all(body: stream.FollowingBody, into: bytearray) -> None:
    """What glanceclient does with the body: read until b''."""
    try:
        while chunk := body.read(1024 * 1024):
            assert len(chunk) == PIECE or len(into) + len(chunk) == len(DATA)  # whole pieces, but the last
            into += chunk
    finally:
        body.handle.close()


def appender(path, data: bytes, arrival: stream.Arrival) -> Callable[[], None]:
    def step() -> None:
        with open(path, "ab") as out:
            out.write(data)
        arrival.landed()
    return step


def test_the_body_follows_the_growing_file_and_sends_the_last_piece_once_the_fetch_is_over(tmp_path):
    part = tmp_path / "img-1.part"
    first, second = 100_000, 250_000
    part.write_bytes(DATA[:first])
    arrival = ScriptedArrival([])
    arrival.steps = [appender(part, DATA[first:second], arrival), appender(part, DATA[second:], arrival),
                     lambda: arrival.finished(FETCHED)]
    body, sent = body_for(part, arrival), bytearray()
    read_all(body, sent)
    assert bytes(sent) == DATA and body.digest is not None
    assert body.digest.hashes == EXPECTED.hashes and body.digest.size == len(DATA)
    # It sent every whole piece that had landed before more came, then waited for the fetch.
    assert arrival.seen[0] == first // PIECE * PIECE > 0 and arrival.seen[1] == second // PIECE * PIECE
    # The whole file was there, but the last piece waited for the fetch's end.
    assert arrival.seen[2] == len(DATA) - len(DATA) % PIECE < len(DATA)
    assert not arrival.steps


def test_the_last_piece_of_a_complete_file_waits_for_the_verified_end_of_the_fetch(tmp_path):
    part = tmp_path / "img-1.part"
    part.write_bytes(DATA)
    arrival = ScriptedArrival([])
    arrival.steps = [lambda: None, lambda: arrival.finished(FETCHED)]  # one wake-up with no news first
    body, sent = body_for(part, arrival), bytearray()
    read_all(body, sent)
    last = len(DATA) % PIECE
    assert arrival.seen == [len(DATA) - last, len(DATA) - last]
    assert bytes(sent) == DATA


def test_a_failed_fetch_aborts_the_upload_before_its_last_byte(tmp_path):
    part = tmp_path / "img-1.part"
    part.write_bytes(DATA)  # every byte there, but the fetch found them wrong
    arrival = ScriptedArrival([])
    arrival.steps = [lambda: arrival.failed(VerificationError(image_id="img-1", detail="checksum mismatch"))]
    body, sent = body_for(part, arrival), bytearray()
    with pytest.raises(stream.Aborted, match="the fetch failed") as info:
        read_all(body, sent)
    assert info.value.retryable is True
    assert len(sent) < len(DATA) and body.digest is None


@pytest.mark.parametrize("change, words", [
    (lambda d: d[:-1] + b"X", "checksum mismatch"),
    (lambda d: b"Y" + d[1:], "checksum mismatch"),
    (lambda d: d + b"more", "size mismatch"),
])
def test_bytes_that_differ_from_the_image_are_never_sent_whole_even_when_the_fetch_verified(tmp_path, change,
                                                                                         words):
    part = tmp_path / "img-1.part"
    part.write_bytes(change(DATA))  # a second writer changed the file after the fetch verified it
    arrival = ScriptedArrival([])
    arrival.finished(FETCHED)
    body, sent = body_for(part, arrival), bytearray()
    with pytest.raises(VerificationError) as info:
        read_all(body, sent)
    assert words in str(info.value) and "bytes being uploaded" in str(info.value) and info.value.retryable
    assert len(sent) < len(DATA)


def test_a_file_that_ends_short_when_the_fetch_is_over_is_a_mismatch_not_a_short_upload(tmp_path):
    part = tmp_path / "img-1.part"
    part.write_bytes(DATA[:-100])
    arrival = ScriptedArrival([])
    arrival.finished(FETCHED)
    body, sent = body_for(part, arrival), bytearray()
    with pytest.raises(VerificationError, match="size mismatch"):
        read_all(body, sent)
    assert len(sent) < len(DATA) - 100


def test_no_new_byte_for_the_idle_timeout_ends_the_upload(tmp_path):
    part = tmp_path / "img-1.part"
    part.write_bytes(DATA[:1000])
    now = [0.0]
    arrival = ScriptedArrival([])

    def nothing_new() -> None:
        now[0] += 40.0  # the fetch is silent

    arrival.steps = [nothing_new] * 3
    body, sent = body_for(part, arrival, clock=lambda: now[0], idle=100.0), bytearray()
    with pytest.raises(TransferError, match="no new byte for 100 s"):
        read_all(body, sent)
    assert bytes(sent) == b"" and len(arrival.seen) == 3  # 1000 bytes: not a whole piece yet


def test_a_cancelled_upload_can_never_complete(tmp_path):
    part = tmp_path / "img-1.part"
    part.write_bytes(DATA)
    arrival = ScriptedArrival([])
    arrival.steps = [lambda: arrival.body.cancel("glance took no byte"), lambda: arrival.finished(FETCHED)]
    body, sent = body_for(part, arrival), bytearray()
    with pytest.raises(stream.Aborted, match="cancelled: glance took no byte"):
        read_all(body, sent)
    assert len(sent) < len(DATA)
