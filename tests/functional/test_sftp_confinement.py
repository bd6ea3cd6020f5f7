"""The cascading store host's SFTP account, as the test topology (and the demo) configure it.

sshd serves the agents' account from a ``Match User`` block: chrooted into the store
directory, ``ForceCommand internal-sftp -R``, no TTY, no forwarding.  A region whose
agent host is compromised holds this account's key; these tests show what the key is
then worth: reading the store's image files, nothing else.  That agents still sync
through the chroot is shown by every sync test (e.g. test_data_plane, test_agent_dataplane).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import paramiko
import pytest

from tests.functional import helpers
from tests.harness import Topology


@pytest.fixture
def ssh(topology: Topology) -> Iterator[paramiko.SSHClient]:
    assert topology.sshd.chroot_dir is not None, "sshd runs unconfined: the harness chroots only as root"
    client = topology.sshd.connect()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def image_id(topology: Topology) -> str:
    return helpers.upload_random(topology.cascading.client(), helpers.MIB).id


def test_the_account_reads_store_files_as_the_chroot_root(topology: Topology, ssh, image_id: str) -> None:
    with ssh.open_sftp() as sftp:
        assert image_id in sftp.listdir("/")
        assert sftp.stat(f"/{image_id}").st_size == helpers.MIB
        assert sftp.normalize("../..") == "/"


def test_no_command_runs(topology: Topology, ssh, tmp_path) -> None:
    marker = tmp_path / f"shell-ran-{uuid.uuid4().hex}"
    _, stdout, stderr = ssh.exec_command(f"touch {marker}; echo SHELL-RAN")
    status = stdout.channel.recv_exit_status()
    output = stdout.read() + stderr.read()
    assert status != 0 and b"SHELL-RAN" not in output
    assert b"sftp connections only" in output
    assert not marker.exists()


def test_ssh_client_gets_no_shell(topology: Topology, tmp_path) -> None:
    ssh = shutil.which("ssh")
    assert ssh is not None, "the ssh client is needed (openssh-client)"
    sshd = topology.sshd
    result = subprocess.run(
        [ssh, "-i", str(sshd.private_key_file), "-p", str(sshd.port), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={sshd.known_hosts_file}", "-o", "StrictHostKeyChecking=yes",
         "-o", "IdentitiesOnly=yes", "-F", "/dev/null", f"{sshd.user}@{sshd.host}", "true"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0, result
    assert "sftp connections only" in result.stdout + result.stderr


def test_no_tty_and_no_forwarding(topology: Topology, ssh) -> None:
    transport = ssh.get_transport()
    assert transport is not None
    channel = transport.open_session()
    with pytest.raises(paramiko.SSHException):
        channel.get_pty()
    with pytest.raises(paramiko.ChannelException):
        transport.open_channel("direct-tcpip", ("127.0.0.1", topology.cascading.port), ("127.0.0.1", 0))


def test_nothing_can_be_written(topology: Topology, ssh, image_id: str) -> None:
    data_dir = topology.cascading.data_dir
    before = sorted(p.name for p in data_dir.iterdir())
    with ssh.open_sftp() as sftp:
        for attempt in (
            lambda: sftp.open("/planted", "wb"),
            lambda: sftp.open(f"/{image_id}", "r+b"),
            lambda: sftp.mkdir("/planted-dir"),
            lambda: sftp.remove(f"/{image_id}"),
            lambda: sftp.rename(f"/{image_id}", "/renamed"),
            lambda: sftp.symlink("/etc/passwd", "/planted-link"),
            lambda: sftp.chmod(f"/{image_id}", 0o777),
        ):
            with pytest.raises(PermissionError):
                attempt()
    assert sorted(p.name for p in data_dir.iterdir()) == before


def test_nothing_outside_the_store_is_readable(topology: Topology, ssh, image_id: str) -> None:
    data_dir = topology.cascading.data_dir
    # A link placed in the store (by glance's host, not the account) resolves inside the chroot.
    escape = data_dir / f"escape-{uuid.uuid4().hex}"
    escape.symlink_to(topology.sshd.known_hosts_file)
    try:
        with ssh.open_sftp() as sftp:
            for path in ("/etc/passwd", "/../../etc/passwd", str(topology.sshd.private_key_file),
                         str(data_dir / image_id), f"/{escape.name}"):
                with pytest.raises(FileNotFoundError):
                    sftp.stat(path)
            assert sorted(sftp.listdir("/..")) == sorted(sftp.listdir("/"))
    finally:
        escape.unlink()
