"""agent.transfer without a network: source checks, verification, resume, the copy loop."""

from __future__ import annotations

import dataclasses
import hashlib
import io

import pytest

from agent import hashing, sshconnect, transfer
from glancesync.exceptions import SourceRefused, VerificationError
from glancesync.storemap import SshStore

PARAMIKO = transfer.FetchOptions(method="paramiko")
STORE = SshStore(host="h", port=22, user="u", private_key_file="k", known_hosts_file="kh", store_dir="/store/images")
DATA = b"x" * 3_000_000


def image_of(data: bytes, **overrides) -> dict:
    record = {
        "id": "img-1",
        "status": "active",
        "size": len(data),
        "checksum": hashlib.md5(data).hexdigest(),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
    }
    record.update(overrides)
    return record


def fetched_of(path, data: bytes) -> transfer.Fetched:
    return transfer.Fetched(str(path), len(data), hashlib.md5(data).hexdigest(), "sha512",
                            hashlib.sha512(data).hexdigest(), 0.1)


@pytest.mark.parametrize(
    "source",
    [
        {"type": "sftp", "path": "/store/images/../../etc/shadow"},
        {"type": "sftp", "path": "/store/imagesX/a"},
        {"type": "sftp", "path": "/store/images"},
        {"type": "sftp", "path": "relative/a"},
        {"type": "sftp", "path": "/store/images/a\x00b"},
        {"type": "http", "path": "/store/images/a"},
        None,
    ],
)
def test_sources_outside_the_store_are_refused_not_retryable(source):
    with pytest.raises(SourceRefused) as info:
        transfer.checked_source("img-1", source, STORE)
    assert info.value.retryable is False


def test_source_inside_the_store_is_normalised():
    assert transfer.checked_source("i", {"type": "sftp", "path": "/store/images/./a"}, STORE) == "/store/images/a"


@pytest.mark.parametrize(
    ("sftp_root", "asked"),
    [(None, "/store/images/sub/a"), ("/store/images", "/sub/a"), ("/store", "/images/sub/a"), ("/", "/store/images/sub/a")],
)
def test_chrooted_account_is_asked_for_paths_inside_its_root(sftp_root, asked):
    store = dataclasses.replace(STORE, sftp_root=sftp_root)
    assert sshconnect.remote_path(store, "/store/images/sub/a") == asked


def test_fetch_through_a_chroot_stats_and_opens_the_mapped_path(tmp_path, monkeypatch):
    asked: list[tuple[str, str]] = []

    class Recording(_Sftp):
        def lstat(self, path):
            asked.append(("lstat", path))
            return super().lstat(path)

        def open(self, path, mode):
            asked.append(("open", path))
            return super().open(path, mode)

    class Client(_Client):
        def open_sftp(self):
            return Recording(self.size)

    def copy(remote, out, start, total, sink, progress, in_flight=transfer.READS_IN_FLIGHT):
        out.write(DATA)
        sink.update(DATA)
        return len(DATA)

    monkeypatch.setattr(sshconnect, "connect", lambda store, image_id, timeout: Client(len(DATA)))
    monkeypatch.setattr(sshconnect, "open_sftp", lambda client, window: client.open_sftp())
    monkeypatch.setattr(transfer, "copy_range", copy)
    store = dataclasses.replace(STORE, sftp_root="/store/images")
    fetched = transfer.fetch(store, image_of(DATA), "/store/images/sub/img", str(tmp_path / "p"), lambda d, t: None,
                             options=PARAMIKO)
    assert fetched.size == len(DATA)
    assert asked == [("lstat", "/sub"), ("lstat", "/sub/img"), ("open", "/sub/img")]


@pytest.mark.parametrize("image_id", ["../x", "a/b", "", ".hidden"])
def test_unsafe_image_ids_never_become_file_names(image_id):
    with pytest.raises(SourceRefused):
        transfer.part_path("/work", image_id)


def test_verify_accepts_matching_bytes(tmp_path):
    path = tmp_path / "img-1.part"
    path.write_bytes(DATA)
    transfer.verify(image_of(DATA), fetched_of(path, DATA))
    assert path.exists()


@pytest.mark.parametrize(
    "field, override",
    [("size", {"size": 1}), ("checksum", {"checksum": "0" * 32}),
     ("os_hash_value (sha512)", {"os_hash_value": "f" * 128})],
)
def test_verification_mismatch_deletes_file_and_names_field(tmp_path, field, override):
    path = tmp_path / "img-1.part"
    path.write_bytes(DATA)
    with pytest.raises(VerificationError) as info:
        transfer.verify(image_of(DATA, **override), fetched_of(path, DATA))
    assert not path.exists()
    assert f"{field} mismatch: received bytes has" in str(info.value)
    assert repr(next(iter(override.values()))) in str(info.value)
    assert info.value.retryable is True


def test_legacy_image_is_verified_on_size_and_md5(tmp_path):
    path = tmp_path / "img-1.part"
    path.write_bytes(DATA)
    transfer.verify(image_of(DATA, os_hash_algo=None, os_hash_value=None), fetched_of(path, DATA))
    with pytest.raises(VerificationError, match="checksum mismatch"):
        transfer.verify(image_of(DATA, os_hash_algo=None, os_hash_value=None, checksum="0" * 32),
                        fetched_of(path, DATA))
    assert not path.exists()


def test_image_without_any_hash_cannot_be_verified_and_is_not_retried(tmp_path):
    path = tmp_path / "img-1.part"
    path.write_bytes(DATA)
    with pytest.raises(VerificationError) as info:
        transfer.verify(image_of(DATA, checksum=None, os_hash_value=None), fetched_of(path, DATA))
    assert "cannot be verified" in str(info.value) and info.value.retryable is False
    assert not path.exists()


class FakeRemote:
    """An SFTPFile stand-in: readv over an in-memory source."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[tuple[int, int]] = []

    def readv(self, chunks, max_concurrent_prefetch_requests=None):
        self.requests += chunks
        for off, size in chunks:
            yield self.data[off : off + size]


def test_copy_loop_hashes_writes_and_reports_progress():
    remote, out = FakeRemote(DATA), io.BytesIO()
    sink = hashing.HashPipe((hashlib.md5(), hashlib.sha512()))
    seen = []
    size = transfer.copy_range(remote, out, 0, len(DATA), sink, lambda d, t: seen.append((d, t)))
    assert size == len(DATA) and out.getvalue() == DATA
    assert sink.hexdigests()[0] == hashlib.md5(DATA).hexdigest()
    assert seen[-1] == (len(DATA), len(DATA)) and len(seen) == 3  # three 1 MiB pieces


def test_copy_loop_resumes_after_the_verified_prefix(tmp_path):
    part = tmp_path / "p"
    part.write_bytes(DATA[:1_000_000])
    sink = hashing.HashPipe((hashlib.md5(), hashlib.sha512()))
    start = hashing.rehash(str(part), sink)
    remote = FakeRemote(DATA)
    with open(part, "ab") as out:
        transfer.copy_range(remote, out, start, len(DATA), sink, lambda d, t: None)
    assert remote.requests[0][0] == 1_000_000
    assert part.read_bytes() == DATA and sink.hexdigests()[1] == hashlib.sha512(DATA).hexdigest()


def test_short_source_is_a_transfer_error_not_a_silent_truncation():
    remote = FakeRemote(DATA[:10])
    with pytest.raises(EOFError):
        with hashing.HashPipe((hashlib.md5(),)) as sink:
            transfer.copy_range(remote, io.BytesIO(), 0, len(DATA), sink, lambda d, t: None)


def test_missing_known_hosts_file_is_refused(tmp_path):
    store = SshStore(host="127.0.0.1", port=1, user="u", private_key_file="k",
                     known_hosts_file=str(tmp_path / "missing"), store_dir="/s")
    with pytest.raises(SourceRefused) as info:
        sshconnect.connect(store, "img-1", timeout=1)
    assert "known_hosts" in str(info.value)


class _Attrs:
    def __init__(self, mode: int, size: int) -> None:
        self.st_mode, self.st_size, self.st_mtime = mode, size, 1


class _Remote:
    def __init__(self, size: int) -> None:
        self.size = size

    def stat(self) -> _Attrs:
        return _Attrs(0o100644, self.size)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Sftp:
    def __init__(self, size: int) -> None:
        self.size = size

    def get_channel(self):
        return self

    def settimeout(self, timeout) -> None:
        pass

    def lstat(self, path):
        return _Attrs(0o100644 if path.endswith("img") else 0o040755, self.size)

    def open(self, path, mode):
        return _Remote(self.size)


class _Client:
    def __init__(self, size: int) -> None:
        self.size = size

    def open_sftp(self) -> _Sftp:
        return _Sftp(self.size)

    def close(self) -> None:
        pass


def test_full_work_dir_fails_retryable_naming_it_and_removes_the_partial_file(tmp_path, monkeypatch):
    import errno

    dest = tmp_path / "work" / "img-1.part"

    def disk_full(remote, out, start, total, sink, progress, in_flight=transfer.READS_IN_FLIGHT):
        out.write(DATA[:100_000])
        out.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sshconnect, "connect", lambda store, image_id, timeout: _Client(len(DATA)))
    monkeypatch.setattr(sshconnect, "open_sftp", lambda client, window: client.open_sftp())
    monkeypatch.setattr(transfer, "copy_range", disk_full)
    with pytest.raises(transfer.TransferError) as info:
        transfer.fetch(STORE, image_of(DATA), "/store/images/img", str(dest), lambda d, t: None, options=PARAMIKO)
    assert info.value.retryable is True
    assert "work dir full" in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists()  # the space that ran out is given back


def test_paramiko_read_that_stalls_past_the_idle_timeout_fails_retryable_and_keeps_the_part(tmp_path, monkeypatch):
    dest = tmp_path / "img-1.part"
    timeouts: list[float] = []

    class Channel:
        def settimeout(self, timeout) -> None:
            timeouts.append(timeout)

    class Sftp(_Sftp):
        def get_channel(self):
            return Channel()

    class Client(_Client):
        def open_sftp(self):
            return Sftp(self.size)

    def stalls(remote, out, start, total, sink, progress, in_flight=transfer.READS_IN_FLIGHT):
        out.write(DATA[:1000])
        raise TimeoutError("timed out")  # what paramiko's channel raises after its timeout

    monkeypatch.setattr(sshconnect, "connect", lambda store, image_id, timeout: Client(len(DATA)))
    monkeypatch.setattr(sshconnect, "open_sftp", lambda client, window: client.open_sftp())
    monkeypatch.setattr(transfer, "copy_range", stalls)
    options = transfer.FetchOptions(method="paramiko", idle_timeout=42.0)
    with pytest.raises(transfer.TransferError) as info:
        transfer.fetch(STORE, image_of(DATA), "/store/images/img", str(dest), lambda d, t: None, timeout=7,
                       options=options)
    assert info.value.retryable is True and "no new byte for 42 s" in str(info.value)
    assert timeouts == [7, 42.0]  # control requests under the ssh timeout, the copy under the idle timeout
    assert dest.stat().st_size == 1000  # kept: the next attempt resumes after re-hashing it


def test_openssh_missing_falls_back_to_paramiko_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(transfer.sftp_openssh, "find_binary", lambda name="sftp": None)
    with caplog.at_level("WARNING"):
        assert transfer.resolve_method("openssh") == "paramiko"
    assert transfer.resolve_method("paramiko") == "paramiko"
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "not installed" in caplog.text
    monkeypatch.setattr(transfer.sftp_openssh, "find_binary", lambda name="sftp": "/usr/bin/sftp")
    assert transfer.resolve_method("openssh") == "openssh"


def test_odd_store_paths_are_refused_before_sftp_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(sshconnect, "connect", lambda *a: pytest.fail("no connection for a path sftp cannot take"))
    with pytest.raises(SourceRefused, match="sftp batch mode"):
        transfer.fetch(STORE, image_of(DATA), '/store/images/a"b', str(tmp_path / "p"), lambda d, t: None)


def test_the_store_read_by_paramiko_keeps_its_windows_worth_of_read_requests_in_flight(tmp_path, monkeypatch):
    # Bounded, but by the SSH window (the bandwidth-delay product), never by 2 MiB alone: that
    # would cap one stream at 2 MiB per round trip on a long link, whatever the window.
    bounds: list[int | None] = []

    class Remote(_Remote):
        def readv(self, pieces, max_concurrent_prefetch_requests=None):
            bounds.append(max_concurrent_prefetch_requests)
            for offset, size in pieces:
                yield DATA[offset:offset + size]

    class Sftp(_Sftp):
        def open(self, path, mode):
            return Remote(self.size)

    class Client(_Client):
        def open_sftp(self):
            return Sftp(self.size)

    monkeypatch.setattr(sshconnect, "connect", lambda store, image_id, timeout: Client(len(DATA)))
    monkeypatch.setattr(sshconnect, "open_sftp", lambda client, window: client.open_sftp())
    dest = tmp_path / "img-1.part"
    fetched = transfer.fetch(STORE, image_of(DATA), "/store/images/img", str(dest), lambda d, t: None,
                             options=PARAMIKO)
    assert fetched.size == len(DATA) and dest.read_bytes() == DATA
    window = transfer.FetchOptions().window_bytes
    assert bounds and set(bounds) == {window // sshconnect.PACKET_BYTES}
    assert window // sshconnect.PACKET_BYTES > transfer.READS_IN_FLIGHT


def test_reads_in_flight_follow_the_window_and_never_fall_below_the_followers_bound():
    assert transfer.reads_in_flight(64 * 1024 * 1024) == 2048
    assert transfer.reads_in_flight(256 * 1024) == transfer.READS_IN_FLIGHT  # a small capped window
