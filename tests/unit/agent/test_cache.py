"""agent/cache.py: the bound, LRU eviction, and never evicting a file in use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cache import PIN_FILE, Cache

IDS = [f"{n:08d}-0000-4000-8000-000000000000" for n in range(6)]


def verified(tmp_path: Path, name: str, size: int) -> str:
    path = tmp_path / f"{name}.part"
    path.write_bytes(b"x" * size)
    return str(path)


def admit(cache: Cache, tmp_path: Path, image_id: str, size: int, when: float) -> bool:
    ok = cache.admit(image_id, verified(tmp_path, image_id, size))
    if ok:
        os.utime(cache.path(image_id), (when, when))
    return ok


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(str(tmp_path / "cache"), max_bytes=300)


def test_admitted_file_has_the_bytes_and_leaves_the_source(cache: Cache, tmp_path: Path) -> None:
    source = verified(tmp_path, "a", 100)
    assert cache.admit(IDS[0], source)
    assert Path(cache.path(IDS[0])).read_bytes() == b"x" * 100
    assert os.path.exists(source)  # the caller removes it
    assert [e.image_id for e in cache.entries()] == [IDS[0]]


def test_bound_holds_and_least_recently_used_goes_first(cache: Cache, tmp_path: Path) -> None:
    for n, when in ((0, 1000), (1, 3000), (2, 2000)):
        assert admit(cache, tmp_path, IDS[n], 100, when)
    assert admit(cache, tmp_path, IDS[3], 150, 4000)
    held = {e.image_id for e in cache.entries()}
    # 450 bytes wanted, 300 allowed: the two oldest (IDS[0] at 1000, IDS[2] at 2000) were evicted.
    assert held == {IDS[1], IDS[3]}
    assert sum(e.size for e in cache.entries()) <= cache.max_bytes


def test_a_served_file_is_never_evicted(cache: Cache, tmp_path: Path) -> None:
    assert admit(cache, tmp_path, IDS[0], 200, 1000)
    assert admit(cache, tmp_path, IDS[1], 100, 2000)
    cache.pin([IDS[0]])
    os.utime(cache.path(IDS[0]), (1000, 1000))  # still the oldest
    assert admit(cache, tmp_path, IDS[2], 100, 3000)
    assert {e.image_id for e in cache.entries()} == {IDS[0], IDS[2]}  # IDS[1] went, the pinned one stayed
    # No room without evicting the pinned file: not admitted, the bound holds.
    assert not cache.admit(IDS[3], verified(tmp_path, "d", 250))
    assert not os.path.exists(cache.path(IDS[3]))
    assert sum(e.size for e in cache.entries()) <= cache.max_bytes


def test_a_file_being_written_is_never_evicted_nor_an_entry(cache: Cache, tmp_path: Path) -> None:
    os.makedirs(cache.root)
    writing = Path(cache.root) / f".{IDS[5]}.123.in"
    writing.write_bytes(b"y" * 250)
    assert admit(cache, tmp_path, IDS[0], 300, 1000)
    assert writing.exists()
    assert [e.image_id for e in cache.entries()] == [IDS[0]]


def test_pin_list_replaced_and_served_files_count_as_used(cache: Cache, tmp_path: Path) -> None:
    assert admit(cache, tmp_path, IDS[0], 10, 1000)
    cache.pin([IDS[0], "not-an-id/../x"])
    assert cache.pinned() == {IDS[0]}
    assert os.stat(cache.path(IDS[0])).st_mtime > 1000
    cache.pin([])
    assert cache.pinned() == set()
    assert (Path(cache.root) / PIN_FILE).exists()


def test_too_large_is_not_admitted_and_remove(cache: Cache, tmp_path: Path) -> None:
    assert not cache.admit(IDS[0], verified(tmp_path, "big", 301))
    assert admit(cache, tmp_path, IDS[1], 10, 1000)
    cache.remove(IDS[1])
    cache.remove(IDS[1])
    assert not cache.holds(IDS[1])


def test_ids_only(cache: Cache) -> None:
    with pytest.raises(ValueError):
        cache.path("../etc/passwd")


def test_a_running_copy_is_relayed_under_a_dot_name_never_evicted_and_gone_at_the_end(
        cache: Cache, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    assert cache.can_relay(str(work)) is False  # no cache directory yet
    os.makedirs(cache.root)
    assert cache.can_relay(str(work)) and not cache.can_relay(str(tmp_path / "nowhere"))
    part = work / f"{IDS[0]}.part"
    part.write_bytes(b"a" * 100)
    cache.relay(IDS[0], str(part))
    relayed = Path(cache.relay_path(IDS[0]))
    assert relayed.name == f".growing.{IDS[0]}" and os.path.samefile(relayed, part)
    assert relayed.stat().st_mode & 0o777 == 0o640
    with part.open("ab") as out:  # it grows: the peer sees the same file
        out.write(b"b" * 50)
    assert relayed.stat().st_size == 150
    assert cache.entries() == [] and not cache.holds(IDS[0])  # never taken for a finished file
    assert admit(cache, tmp_path, IDS[1], 300, 1.0)  # fills the bound: the relay is not a candidate
    assert relayed.exists()
    # A new .part (an attempt started afresh) replaces the relayed one.
    part.unlink()
    part.write_bytes(b"c")
    cache.relay(IDS[0], str(part))
    assert relayed.read_bytes() == b"c"
    cache.unrelay(IDS[0])
    cache.unrelay(IDS[0])
    assert not relayed.exists() and part.exists()


def test_relays_left_by_a_dead_agent_are_cleared_and_a_delete_removes_one(cache: Cache, tmp_path: Path) -> None:
    os.makedirs(cache.root)
    for image_id in IDS[:2]:
        part = tmp_path / f"{image_id}.part"
        part.write_bytes(b"x")
        cache.relay(image_id, str(part))
    cache.remove(IDS[0])
    assert not os.path.exists(cache.relay_path(IDS[0])) and os.path.exists(cache.relay_path(IDS[1]))
    cache.clear_relays()
    assert not os.path.exists(cache.relay_path(IDS[1]))
