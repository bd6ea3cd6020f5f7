"""agent/growing.py without a network: following a peer's copy while it grows, up to the image's size."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import budget, growing, ratelimit, sshconnect, transfer
from glancesync.exceptions import TransferError, VerificationError
from glancesync.storemap import SshStore

IMAGE_ID = "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"
DATA = bytes(range(256)) * 12_000  # about 3 MB
OPTIONS = transfer.FetchOptions(method="paramiko", idle_timeout=10.0)


def image_of(data: bytes) -> dict[str, Any]:
    return {"id": IMAGE_ID, "status": "active", "size": len(data), "checksum": hashlib.md5(data).hexdigest(),
            "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest()}


class _File:
    """An open remote file: the real local one (fstat follows its growth, like the server's)."""

    def __init__(self, path: str) -> None:
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close()

    def stat(self) -> os.stat_result:
        return os.fstat(self.handle.fileno())

    # The bound on outstanding read requests each readv was given (paramiko's keyword).
    in_flight: list[int | None] = []

    def readv(self, pieces: list[tuple[int, int]], max_concurrent_prefetch_requests: int | None = None) -> Any:
        _File.in_flight.append(max_concurrent_prefetch_requests)
        for offset, size in pieces:
            self.handle.seek(offset)
            yield self.handle.read(size)

    def close(self) -> None:
        self.handle.close()


class _Sftp:
    """An SFTP session on the local peer cache directory (no chroot: paths are local)."""

    def get_channel(self) -> _Sftp:
        return self

    def settimeout(self, timeout: float) -> None:
        pass

    def lstat(self, path: str) -> os.stat_result:
        return os.lstat(path)

    def open(self, path: str, mode: str) -> _File:
        return _File(path)


class _Client:
    def close(self) -> None:
        pass


class Upstream:
    """The upstream agent: its copy grows by ``step`` bytes whenever the follower sleeps."""

    def __init__(self, cache_dir: Path, data: bytes, step: int, stop_at: int | None = None,
                 appear_after: int = 0) -> None:
        self.relay = cache_dir / f".growing.{IMAGE_ID}"
        self.final = cache_dir / IMAGE_ID
        self.data, self.step, self.stop_at, self.appear_after = data, step, stop_at, appear_after
        self.now, self.sleeps, self.written = 0.0, 0, 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        if self.sleeps <= self.appear_after:
            return
        end = min(len(self.data), self.written + self.step, self.stop_at if self.stop_at is not None else len(self.data))
        with open(self.relay, "ab") as out:
            out.write(self.data[self.written:end])
        self.written = end
        if end == len(self.data) and not self.final.exists():
            os.link(self.relay, self.final)  # admitted, then the relay name goes: same inode
            os.unlink(self.relay)


@pytest.fixture
def peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SshStore, Path]:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    monkeypatch.setattr(sshconnect, "connect", lambda store, image_id, timeout: _Client())
    monkeypatch.setattr(sshconnect, "open_sftp", lambda client, window: _Sftp())
    return SshStore("peer", 22, "p", "k", "kh", str(cache_dir)), cache_dir


def follow(store: SshStore, upstream: Upstream, dest: Path, data: bytes = DATA,
           seen: list[tuple[int, int]] | None = None, options: transfer.FetchOptions = OPTIONS) -> transfer.Fetched:
    seen = [] if seen is None else seen
    return growing.fetch(store, image_of(data), os.path.join(store.store_dir, IMAGE_ID), str(dest),
                         lambda done, total: seen.append((done, total)), 5.0, options, lambda: None,
                         clock=upstream.clock, sleep=upstream.sleep)


def test_follows_a_copy_that_appears_late_and_grows_to_the_full_size(peer, tmp_path: Path) -> None:
    store, cache_dir = peer
    upstream = Upstream(cache_dir, DATA, step=700_000, appear_after=3)
    seen: list[tuple[int, int]] = []
    fetched = follow(store, upstream, tmp_path / "x.part", seen=seen)
    assert (tmp_path / "x.part").read_bytes() == DATA
    assert fetched.size == len(DATA) and fetched.resumed_from == 0
    assert upstream.sleeps > 5  # it did wait for the upstream, not read a finished file
    # While it waited it told the upload it was alive (same count, again and again).
    assert seen.count((0, len(DATA))) >= 3


def test_a_follower_keeps_few_read_requests_in_flight(peer, tmp_path: Path, monkeypatch) -> None:
    # A whole 32 MiB batch of requests at once pushed 32 MiB at a shaped peer link: the
    # follower fell behind its upstream (the WAN bench's chain, doc/performance.md).
    store, cache_dir = peer
    monkeypatch.setattr(_File, "in_flight", [])
    upstream = Upstream(cache_dir, DATA, step=700_000)
    follow(store, upstream, tmp_path / "x.part")
    assert (tmp_path / "x.part").read_bytes() == DATA
    assert _File.in_flight and set(_File.in_flight) == {transfer.READS_IN_FLIGHT}
    assert transfer.READS_IN_FLIGHT * 32 * 1024 <= 2 * 1024 * 1024


def test_a_finished_file_is_read_at_once(peer, tmp_path: Path) -> None:
    store, cache_dir = peer
    (cache_dir / IMAGE_ID).write_bytes(DATA)
    upstream = Upstream(cache_dir, DATA, step=0)
    follow(store, upstream, tmp_path / "x.part")
    assert (tmp_path / "x.part").read_bytes() == DATA and upstream.sleeps == 0


def test_a_copy_that_stops_growing_fails_the_source_and_keeps_the_prefix(peer, tmp_path: Path) -> None:
    store, cache_dir = peer
    upstream = Upstream(cache_dir, DATA, step=500_000, stop_at=1_000_000)
    with pytest.raises(TransferError) as info:
        follow(store, upstream, tmp_path / "x.part")
    assert info.value.retryable and f".growing.{IMAGE_ID} on peer: no new byte at 1000000" in str(info.value)
    assert (tmp_path / "x.part").read_bytes() == DATA[:1_000_000]  # the next source resumes after it
    assert upstream.now >= OPTIONS.idle_timeout


def test_no_copy_at_all_fails_the_source_after_follow_start_timeout_not_the_idle_timeout(
        peer, tmp_path: Path) -> None:
    # Neither the finished nor the relayed file: the upstream relays as its fetch starts, so
    # after follow_start_timeout none is coming; waiting out 300 s only delayed the fallback.
    store, cache_dir = peer
    upstream = Upstream(cache_dir, DATA, step=1, appear_after=10 ** 6)
    options = transfer.FetchOptions(method="paramiko", idle_timeout=300.0, follow_start_timeout=30.0)
    with pytest.raises(TransferError, match=r"no copy appeared for 30 s \(follow_start_timeout\)") as info:
        follow(store, upstream, tmp_path / "x.part", options=options)
    assert info.value.retryable
    assert 30.0 <= upstream.now < 31.0


def test_a_copy_that_appears_within_follow_start_timeout_is_followed(peer, tmp_path: Path) -> None:
    store, cache_dir = peer
    upstream = Upstream(cache_dir, DATA, step=1_000_000, appear_after=50)  # 25 s of nothing
    options = transfer.FetchOptions(method="paramiko", idle_timeout=300.0, follow_start_timeout=30.0)
    follow(store, upstream, tmp_path / "x.part", options=options)
    assert (tmp_path / "x.part").read_bytes() == DATA


def test_a_resumed_part_is_hashed_again_and_only_the_rest_is_read(peer, tmp_path: Path) -> None:
    store, cache_dir = peer
    (tmp_path / "x.part").write_bytes(DATA[:1_234_567])
    upstream = Upstream(cache_dir, DATA, step=900_000)
    fetched = follow(store, upstream, tmp_path / "x.part")
    assert fetched.resumed_from == 1_234_567 and (tmp_path / "x.part").read_bytes() == DATA


def test_bad_upstream_bytes_fail_verification_like_any_source(peer, tmp_path: Path) -> None:
    store, cache_dir = peer
    bad = DATA[:-1] + b"!"
    upstream = Upstream(cache_dir, bad, step=1_000_000)
    with pytest.raises(VerificationError):
        follow(store, upstream, tmp_path / "x.part", data=DATA)
    assert not (tmp_path / "x.part").exists()


def test_a_relayed_link_is_refused(peer, tmp_path: Path) -> None:
    store, cache_dir = peer
    (tmp_path / "secret").write_bytes(DATA)
    os.symlink(tmp_path / "secret", cache_dir / f".growing.{IMAGE_ID}")
    with pytest.raises(Exception, match="symbolic link"):
        follow(store, Upstream(cache_dir, DATA, step=0), tmp_path / "x.part")


def test_an_upstream_copy_that_ends_without_a_finished_file_fails_the_source_before_the_idle_timeout(
        peer, tmp_path: Path) -> None:
    store, cache_dir = peer
    upstream = Upstream(cache_dir, DATA, step=400_000, stop_at=800_000)
    real_sleep = upstream.sleep

    def sleep(seconds: float) -> None:
        real_sleep(seconds)
        if upstream.written == 800_000 and upstream.relay.exists():
            upstream.relay.unlink()  # its copy failed: the relay name goes, no finished file

    upstream.sleep = sleep  # type: ignore[method-assign]
    with pytest.raises(TransferError, match="ended at byte 800000"):
        follow(store, upstream, tmp_path / "x.part")
    assert upstream.now < OPTIONS.idle_timeout
    assert (tmp_path / "x.part").read_bytes() == DATA[:800_000]


FAKE_SFTP = """#!{python}
# OpenSSH's sftp as the follower drives it: one get/reget line on stdin, local paths.
import os, shlex, sys
verb, remote, local = shlex.split(sys.stdin.read())
with open({log!r}, "a") as log:
    log.write(" ".join([verb, *sys.argv[1:]]) + "\\n")
start = os.path.getsize(local) if verb == "reget" else 0
with open(remote, "rb") as src, open(local, "r+b" if verb == "reget" else "wb") as dst:
    src.seek(start)
    dst.seek(start)
    dst.write(src.read())
"""


@pytest.fixture
def fake_sftp(tmp_path: Path) -> tuple[str, Path]:
    """An ``sftp`` that copies the local 'remote' file as OpenSSH's would, logging each run."""
    log = tmp_path / "sftp-runs"
    binary = tmp_path / "fake-sftp"
    binary.write_text(FAKE_SFTP.format(python=sys.executable, log=str(log)))
    binary.chmod(0o755)
    return str(binary), log


def runs_of(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_with_openssh_the_growing_copy_is_read_by_sftp_reget_and_ends_byte_identical_and_verified(
        peer, fake_sftp, tmp_path: Path, monkeypatch) -> None:
    store, cache_dir = peer
    binary, log = fake_sftp
    monkeypatch.setattr(growing, "RUN_BYTES", 1_000_000)
    monkeypatch.setattr(transfer, "copy_range", lambda *a, **k: pytest.fail("paramiko read the bytes"))
    (tmp_path / "x.part").write_bytes(DATA[:300_000])  # an earlier attempt's prefix: resumed
    upstream = Upstream(cache_dir, DATA, step=400_000, appear_after=2)
    options = transfer.FetchOptions(method="openssh", idle_timeout=10.0, sftp_binary=binary)
    seen: list[tuple[int, int]] = []
    fetched = follow(store, upstream, tmp_path / "x.part", seen=seen, options=options)
    assert (tmp_path / "x.part").read_bytes() == DATA
    assert fetched.size == len(DATA) and fetched.resumed_from == 300_000
    assert fetched.checksum == hashlib.md5(DATA).hexdigest()  # verified: each byte hashed once, in order
    runs = runs_of(log)
    assert len(runs) >= 2 and all(run.startswith("reget ") for run in runs), runs
    assert all("StrictHostKeyChecking=yes" in run and "UserKnownHostsFile=kh" in run for run in runs)
    assert seen[-1] == (len(DATA), len(DATA))


def test_with_openssh_tiny_increments_do_not_start_a_run_each(peer, fake_sftp, tmp_path: Path) -> None:
    # A run is an SSH connection: a few KiB more is not worth one; RUN_LAG_SECONDS bounds the lag.
    store, cache_dir = peer
    binary, log = fake_sftp
    data = DATA[:600_000]
    upstream = Upstream(cache_dir, data, step=10_000)
    options = transfer.FetchOptions(method="openssh", idle_timeout=10.0, sftp_binary=binary)
    follow(store, upstream, tmp_path / "x.part", data=data, options=options)
    assert (tmp_path / "x.part").read_bytes() == data
    runs = runs_of(log)
    polls_per_lag = growing.RUN_LAG_SECONDS / growing.POLL_SECONDS
    assert runs and len(runs) <= upstream.sleeps / polls_per_lag + 1, (len(runs), upstream.sleeps)
    assert runs[0].startswith("get ") and all(run.startswith("reget ") for run in runs[1:])


def test_with_openssh_the_bandwidth_cap_reaches_sftp(peer, fake_sftp, tmp_path: Path) -> None:
    store, cache_dir = peer
    binary, log = fake_sftp
    (cache_dir / IMAGE_ID).write_bytes(DATA)
    options = transfer.FetchOptions(method="openssh", idle_timeout=10.0, sftp_binary=binary, rate_limit=10 ** 9)
    follow(store, Upstream(cache_dir, DATA, step=0), tmp_path / "x.part", options=options)
    assert (tmp_path / "x.part").read_bytes() == DATA
    assert [run.split(" -l ")[1].split()[0] for run in runs_of(log)] == [str(ratelimit.sftp_limit(10 ** 9))]


def test_with_openssh_a_relayed_link_is_refused_before_sftp_runs(peer, fake_sftp, tmp_path: Path) -> None:
    store, cache_dir = peer
    binary, log = fake_sftp
    (tmp_path / "secret").write_bytes(DATA)
    os.symlink(tmp_path / "secret", cache_dir / f".growing.{IMAGE_ID}")
    options = transfer.FetchOptions(method="openssh", idle_timeout=10.0, sftp_binary=binary)
    with pytest.raises(Exception, match="symbolic link"):
        follow(store, Upstream(cache_dir, DATA, step=0), tmp_path / "x.part", options=options)
    assert runs_of(log) == []


def test_with_openssh_an_upstream_that_stops_fails_the_source_after_the_idle_timeout(
        peer, fake_sftp, tmp_path: Path) -> None:
    store, cache_dir = peer
    binary, _log = fake_sftp
    upstream = Upstream(cache_dir, DATA, step=500_000, stop_at=1_000_000)
    options = transfer.FetchOptions(method="openssh", idle_timeout=10.0, sftp_binary=binary)
    with pytest.raises(TransferError, match="no new byte at 1000000"):
        follow(store, upstream, tmp_path / "x.part", options=options)
    assert (tmp_path / "x.part").read_bytes() == DATA[:1_000_000]


def test_with_openssh_an_upstream_that_ends_without_a_file_fails_the_source_before_the_idle_timeout(
        peer, fake_sftp, tmp_path: Path) -> None:
    # Its copy failed verification: the .part (and with it the relayed name) goes, no finished file.
    store, cache_dir = peer
    binary, _log = fake_sftp
    upstream = Upstream(cache_dir, DATA, step=400_000, stop_at=1_200_000)
    real_sleep = upstream.sleep

    def sleep(seconds: float) -> None:
        real_sleep(seconds)
        if upstream.written == 1_200_000 and upstream.relay.exists() and upstream.now > 4:
            upstream.relay.unlink()

    upstream.sleep = sleep  # type: ignore[method-assign]
    options = transfer.FetchOptions(method="openssh", idle_timeout=100.0, sftp_binary=binary)
    with pytest.raises(TransferError, match="without a finished file"):
        follow(store, upstream, tmp_path / "x.part", options=options)
    assert upstream.now < 20


def test_with_openssh_each_run_is_paced_by_the_region_budget(peer, tmp_path: Path, monkeypatch) -> None:
    # max_bandwidth holds a follower's sftp as it holds the store's: `-l`, and the budget's
    # pacer is told each process (it stops it with SIGSTOP while the region is in debt).
    store, cache_dir = peer
    (cache_dir / IMAGE_ID).write_bytes(DATA)
    seen: list[dict[str, Any]] = []

    def run(store, image_id, remote, local, hashers, progress, idle, connect, binary, **kwargs):
        seen.append(kwargs)
        with open(remote, "rb") as src, open(local, "ab") as out:
            out.write(src.read())
        for hasher in hashers:
            hasher.update(DATA)
        progress(len(DATA))
        return len(DATA), tuple(h.hexdigest() for h in hashers)

    monkeypatch.setattr(growing.sftp_openssh, "run", run)
    monkeypatch.setattr(growing.sftp_openssh, "find_binary", lambda name="sftp": "/usr/bin/sftp")
    options = transfer.FetchOptions(method="openssh", idle_timeout=10.0, rate_limit=10 ** 9,
                                    budget_file=str(tmp_path / ".bandwidth"))
    follow(store, Upstream(cache_dir, DATA, step=0), tmp_path / "x.part", options=options)
    assert len(seen) == 1 and seen[0]["limit"] == ratelimit.sftp_limit(10 ** 9) > 0
    pacer = seen[0]["on_spawn"].__self__
    assert isinstance(pacer, budget.Pacer) and isinstance(pacer.bucket, budget.SharedBucket)
    assert pacer.bucket.state().charged == len(DATA)  # what sftp wrote was charged to the region
