"""agent.hashing: hash threads, and following a file while another writer appends to it."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from agent import hashing


def test_hash_pipe_equals_hashlib_over_the_whole_input():
    blocks = [os.urandom(n) for n in (1, 4096, 1_000_000, 3, 2_500_000)]
    with hashing.HashPipe(hashing.new_hashers("sha256")) as sink:
        for block in blocks:
            sink.update(block)
        md5, sha = sink.hexdigests()
    whole = b"".join(blocks)
    assert (md5, sha) == (hashlib.md5(whole).hexdigest(), hashlib.sha256(whole).hexdigest())
    assert sink.size == len(whole)


def test_unknown_algorithm_is_a_value_error():
    with pytest.raises(ValueError):
        hashing.new_hashers("sha999")


def test_follower_hashes_a_file_that_grows_in_pieces(tmp_path):
    path = tmp_path / "growing.part"
    path.write_bytes(b"prefix-left-by-an-earlier-attempt")
    pieces = [os.urandom(n) for n in (10, 700_000, 1, 2_000_000, 4095, 1_048_576)]
    written = threading.Event()
    appended: list[int] = []

    def writer() -> None:
        with open(path, "ab") as out:
            for piece in pieces:
                out.write(piece)
                out.flush()
                appended.append(len(piece))
        written.set()

    seen: list[int] = []
    sink = hashing.HashPipe(hashing.new_hashers("sha512"))
    prefix = path.stat().st_size  # before the writer starts, or it may already hold a piece
    thread = threading.Thread(target=writer)
    thread.start()
    size = hashing.follow(str(path), sink, written.is_set, seen.append, idle_timeout=60.0, stall=lambda: None,
                          report_from=prefix)
    thread.join()
    whole = path.read_bytes()
    assert size == len(whole) and len(appended) == len(pieces)
    assert sink.hexdigests() == (hashlib.md5(whole).hexdigest(), hashlib.sha512(whole).hexdigest())
    assert seen[-1] == len(whole) and seen == sorted(seen)
    assert seen[0] > prefix  # re-hashing what an earlier attempt left is not progress


def test_follower_gives_up_after_the_idle_timeout_and_calls_stall(tmp_path):
    path = tmp_path / "stuck.part"
    path.write_bytes(b"x" * 100)
    now = [0.0]
    stalled: list[bool] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with hashing.HashPipe(hashing.new_hashers("sha512")) as sink, pytest.raises(hashing.Stalled) as info:
        hashing.follow(str(path), sink, lambda: False, lambda done: None, idle_timeout=5.0,
                       stall=lambda: stalled.append(True), clock=lambda: now[0], sleep=sleep)
    assert stalled == [True] and info.value.done == 100 and "no new byte for 5 s" in str(info.value)
