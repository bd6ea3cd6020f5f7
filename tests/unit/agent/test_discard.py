"""agent.discard: the partial file of a cancelled copy goes once its writer has let go of it."""

from __future__ import annotations

import os
import threading

from agent import partlock
from agent.discard import GIVE_UP_AFTER, Discards

IMAGE = "11111111-2222-3333-4444-555555555555"


def test_the_part_is_removed_only_once_its_lock_is_free(tmp_path) -> None:
    part = tmp_path / f"{IMAGE}.part"
    part.write_bytes(b"partial")
    discards = Discards(str(tmp_path))
    held, release = threading.Event(), threading.Event()

    def writer() -> None:  # the killed worker, still on its way out, holds the lock
        with partlock.hold(str(part), IMAGE):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(30)
        discards.add(IMAGE, 0.0)
        discards.sweep(1.0)
        assert part.exists() and IMAGE in discards.pending
    finally:
        release.set()
        thread.join()
    discards.sweep(2.0)
    assert not part.exists() and not discards.pending
    assert not os.path.exists(partlock.lock_path(str(part)))


def test_a_new_attempt_keeps_its_part_and_a_stuck_lock_is_given_up(tmp_path) -> None:
    part = tmp_path / f"{IMAGE}.part"
    part.write_bytes(b"partial")
    discards = Discards(str(tmp_path))
    discards.add(IMAGE, 0.0)
    discards.forget(IMAGE)
    discards.sweep(1.0)
    assert part.exists()
    with partlock.hold(str(part), IMAGE):
        discards.add(IMAGE, 0.0)
        discards.sweep(GIVE_UP_AFTER + 1)
    assert part.exists() and not discards.pending


def test_no_work_dir_or_a_strange_id_removes_nothing(tmp_path) -> None:
    Discards(None).add(IMAGE, 0.0)
    discards = Discards(str(tmp_path))
    discards.add("../etc", 0.0)
    assert not discards.pending
