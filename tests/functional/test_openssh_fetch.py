"""The OpenSSH fetch (agent/sftp_openssh.py) against the real, chrooted sshd of the topology.

Bytes come through the system's ``sftp`` client into the ``.part`` while the
follower hashes them; a ``reget`` resumes a partial file; a host key not in our
known_hosts is refused by ``sftp`` itself and never written anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from agent import sftp_openssh, sshconnect, transfer
from glancesync import glance, storemap
from glancesync.exceptions import SourceRefused, VerificationError
from tests.functional import helpers
from tests.harness.topology import Topology

OPENSSH = transfer.FetchOptions(method="openssh", idle_timeout=60.0)

pytestmark = pytest.mark.skipif(sftp_openssh.find_binary() is None, reason="no OpenSSH sftp client installed")


@pytest.fixture(scope="module")
def store(topology: Topology) -> storemap.SshStore:
    region = topology.region_names[0]
    return storemap.load(str(topology.agent_store_yaml(region)), storemap.Role.AGENT, region).store


@pytest.fixture(scope="module")
def image(topology: Topology) -> dict:
    uploaded = helpers.upload_random(topology.cascading.client(), 5 * helpers.MIB + 4321)
    return glance.image_to_dict(topology.cascading.client().images.get(uploaded.id))


def source_of(topology: Topology, image: dict) -> str:
    return str(topology.cascading.data_dir / image["id"])


def test_openssh_fetch_through_the_chroot_gives_the_bytes_and_hashes(topology, store, image, tmp_path):
    assert store.sftp_root is None or sshconnect.remote_path(store, source_of(topology, image)) != source_of(
        topology, image)  # the chroot mapping is in play whenever the account is confined
    dest = tmp_path / "full.part"
    seen: list[tuple[int, int]] = []
    fetched = transfer.fetch(store, image, source_of(topology, image), str(dest),
                             lambda d, t: seen.append((d, t)), timeout=10, options=OPENSSH)
    data = (topology.cascading.data_dir / image["id"]).read_bytes()
    assert dest.read_bytes() == data
    assert (fetched.size, fetched.checksum, fetched.os_hash_value) == (
        image["size"], image["checksum"], image["os_hash_value"])
    assert fetched.resumed_from == 0 and seen[-1] == (image["size"], image["size"])


def test_reget_resumes_from_the_partial_file(topology, store, image, tmp_path):
    data = (topology.cascading.data_dir / image["id"]).read_bytes()
    dest = tmp_path / "half.part"
    dest.write_bytes(data[:3 * helpers.MIB + 17])
    fetched = transfer.fetch(store, image, source_of(topology, image), str(dest), lambda d, t: None, timeout=10,
                             options=OPENSSH)
    assert fetched.resumed_from == 3 * helpers.MIB + 17
    assert dest.read_bytes() == data and fetched.os_hash_value == image["os_hash_value"]
    # The prefix is kept, not fetched again: a prefix that is wrong stays wrong, and
    # the hashes, which cover it, catch it (and the file is removed for a clean retry).
    bad = tmp_path / "bad.part"
    bad.write_bytes(b"\0" * helpers.MIB)
    with pytest.raises(VerificationError, match="mismatch"):
        transfer.fetch(store, image, source_of(topology, image), str(bad), lambda d, t: None, timeout=10,
                       options=OPENSSH)
    assert not bad.exists()


def _run(store, topology, image, dest) -> None:
    remote = sshconnect.remote_path(store, source_of(topology, image))
    dest.touch()
    sftp_openssh.run(store, image["id"], remote, str(dest), (hashlib.md5(),), lambda done: None, 30.0, 10.0)


def test_unknown_host_key_is_refused_and_never_added(topology, store, image, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    before = os.stat(empty)
    unknown = dataclasses.replace(store, known_hosts_file=str(empty))
    dest = tmp_path / "u.part"
    with pytest.raises(SourceRefused) as info:
        _run(unknown, topology, image, dest)
    assert info.value.retryable is False
    assert f"host {store.host}:{store.port} is not in known_hosts file {empty}" in str(info.value)
    assert empty.read_text() == "" and os.stat(empty).st_mtime_ns == before.st_mtime_ns
    assert dest.stat().st_size == 0
    assert not (tmp_path / "known_hosts.old").exists()


def test_changed_host_key_is_refused_naming_host_and_file(topology, store, image, tmp_path):
    wrong_file = topology.sshd.wrong_known_hosts_file
    content = wrong_file.read_bytes()
    wrong = dataclasses.replace(store, known_hosts_file=str(wrong_file))
    with pytest.raises(SourceRefused) as info:
        _run(wrong, topology, image, tmp_path / "w.part")
    assert f"host key of {store.host}:{store.port} does not match {wrong_file}" in str(info.value)
    assert wrong_file.read_bytes() == content


def test_missing_source_is_a_clear_retryable_reason(topology, store, tmp_path):
    remote = sshconnect.remote_path(store, str(topology.cascading.data_dir / "no-such-image"))
    dest = tmp_path / "m.part"
    dest.touch()
    with pytest.raises(transfer.TransferError) as info:
        sftp_openssh.run(store, "m", remote, str(dest), (hashlib.md5(),), lambda done: None, 30.0, 10.0)
    assert info.value.retryable is True and f"{remote} not found on {store.host}" in str(info.value)
