"""Spool and SharedUsage on a real directory: the index, crash recovery, the shared cap, flock liveness."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glance_proxy import spool as spool_mod
from glance_proxy.spool import SharedUsage, Spool, SpoolFull

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def usage(tmp_path):
    shared = SharedUsage(tmp_path / "spool", 10_000)
    yield shared
    shared.close()


def event_file(directory: Path, seq: int, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{seq:020d}.evt"
    path.write_bytes(data)
    return path


def test_put_is_fsynced_renamed_and_indexed(usage, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    spool = Spool.create(usage.root, usage)
    seq = spool.put(b"abc")
    assert len(synced) == 2  # the file, then its directory
    assert [p.name for p in spool.dir.iterdir()] == [f"{seq:020d}.evt"]
    assert spool.first() == seq and spool.read(seq) == b"abc"
    assert len(spool) == 1 and spool.used_bytes == 3 and usage.used == 3
    spool.remove(seq)
    assert spool.first() is None and list(spool.dir.iterdir()) == [] and usage.used == 0


def test_the_index_serves_the_oldest_first_without_listing_the_directory(usage, monkeypatch):
    spool = Spool.create(usage.root, usage)
    for n in range(1, 13):
        spool.put(b"e%d" % n)
    listed = []
    real_scandir, real_listdir = os.scandir, os.listdir
    monkeypatch.setattr(os, "scandir", lambda p=".": (listed.append(p), real_scandir(p))[1])
    monkeypatch.setattr(os, "listdir", lambda p=".": (listed.append(p), real_listdir(p))[1])
    monkeypatch.setattr(Path, "iterdir", lambda self: (listed.append(self), iter(real_listdir(self)))[1])
    got = []
    while (seq := spool.first()) is not None:
        got.append(spool.read(seq))
        spool.remove(seq)
    assert got == [b"e%d" % n for n in range(1, 13)]
    assert listed == []


def test_adopting_rebuilds_the_index_in_sequence_order_and_drops_half_written_files(usage):
    orphan = usage.root / "4242"  # also the layout of the PID-named spools of earlier versions
    for seq in (10, 9, 2, 100):
        event_file(orphan, seq, b"x" * seq)
    (orphan / ".tmp-101").write_bytes(b"partial")  # a crash between write and rename
    (orphan / "notes.txt").write_text("not an event")
    adopted = Spool.adopt(orphan, usage)
    assert adopted is not None
    assert [p.name for p in adopted.pending()] == [f"{n:020d}.evt" for n in (2, 9, 10, 100)]
    assert adopted.used_bytes == 121
    assert not (orphan / ".tmp-101").exists()


def test_closing_removes_an_empty_spool_and_releases_a_full_one_for_adoption(usage):
    empty, full = Spool.create(usage.root, usage), Spool.create(usage.root, usage)
    full.put(b"kept")
    assert Spool.adopt(full.dir, usage) is None  # held by its owner
    empty.close()
    full.close()
    assert not empty.dir.exists()
    again = Spool.adopt(full.dir, usage)
    assert again is not None and [again.read(s) for s in (again.first(),)] == [b"kept"]


def test_the_cap_counts_every_spool_under_the_directory(tmp_path):
    root = tmp_path / "spool"
    # Two workers: each has its own SharedUsage descriptor on the same .usage file.
    first, second = SharedUsage(root, 1000), SharedUsage(root, 1000)
    a, b = Spool.create(root, first), Spool.create(root, second)
    a.put(b"a" * 600)
    with pytest.raises(SpoolFull):
        b.put(b"b" * 600)
    assert [p.name for p in b.dir.iterdir()] == []  # nothing left behind by the refused event
    b.put(b"b" * 400)
    assert first.used == second.used == 1000
    a.remove(a.first())
    b.put(b"b" * 600)  # the room a freed is seen by b
    assert second.used == 1000


def test_recount_mends_a_count_that_a_crash_left_wrong(usage):
    event_file(usage.root / "1-dead", 1, b"x" * 70)
    event_file(usage.root / "1-dead", 2, b"x" * 30)
    os.pwrite(usage.fd, (999_999).to_bytes(8, "little"), 0)
    assert usage.recount() == 100 and usage.used == 100


def test_a_directory_nobody_locks_is_orphaned_even_when_its_pid_is_alive(usage):
    """PIDs come back after a reboot: a spool named after a live PID but unlocked is adopted."""
    orphan = usage.root / str(os.getppid())
    event_file(orphan, 1, b"e1")
    adopted = Spool.adopt(orphan, usage)
    assert adopted is not None and len(adopted) == 1


def test_exactly_one_adopter_gets_an_orphan(usage):
    orphan = usage.root / "7-gone"
    event_file(orphan, 1, b"e1")
    winner = Spool.adopt(orphan, usage)
    assert winner is not None
    assert Spool.adopt(orphan, usage) is None


_HOLDER = textwrap.dedent(
    """
    import sys
    from glance_proxy.spool import SharedUsage, Spool
    usage = SharedUsage(sys.argv[1], 10_000)
    spool = Spool.create(usage.root, usage)
    for n in (1, 2, 3):
        spool.put(b"event-%d" % n)
    print(spool.dir, flush=True)
    sys.stdin.readline()  # hold the lock until told
    import os
    os._exit(0)  # a crash: no close(), the kernel drops the lock
    """
)


def test_a_spool_is_adopted_only_after_its_holder_process_died(usage):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(usage.root)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )  # fmt: skip
    try:
        held = Path(proc.stdout.readline().strip())
        assert held.is_dir(), "the holder did not start"
        assert Spool.adopt(held, usage) is None  # alive: its flock is held
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    adopted = Spool.adopt(held, usage)
    assert adopted is not None
    got = []
    while (seq := adopted.first()) is not None:
        got.append(adopted.read(seq))
        adopted.remove(seq)
    adopted.close()
    assert got == [b"event-1", b"event-2", b"event-3"]
    assert not held.exists()


def test_a_child_forked_without_exec_does_not_keep_the_parent_spool_locked(usage):
    spool = Spool.create(usage.root, usage)
    to_parent, from_child = os.pipe()
    to_child, from_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: say it runs, then live on until told
        os.write(from_child, b"x")
        os.read(to_child, 1)
        os._exit(0)
    try:
        assert os.read(to_parent, 1) == b"x"
        fd = spool.fd
        spool_mod._OPEN_FDS.discard(spool)  # the parent "dies": its descriptor closes
        os.close(fd)
        spool.fd = -1
        assert Spool.adopt(spool.dir, usage) is not None  # the living child holds nothing
    finally:
        os.write(from_parent, b"x")
        os.waitpid(pid, 0)
        for fd in (to_parent, from_child, to_child, from_parent):
            os.close(fd)
