"""agent.sftp_openssh without a network: the argument list, the batch, odd paths, a stalled sftp, reasons."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest

from agent import sftp_openssh, sshconnect
from glancesync.exceptions import SourceRefused, TransferError
from glancesync.storemap import SshStore

STORE = SshStore(host="store.example.com", port=2222, user="glancesync", private_key_file="/etc/gs/id_ed25519",
                 known_hosts_file="/etc/gs/known_hosts", store_dir="/srv/store/images", sftp_root="/srv/store")


def options_of(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "-o")


def test_command_pins_host_key_and_key_and_reads_no_user_config():
    argv = sftp_openssh.command(STORE, "/usr/bin/sftp", 30.0)
    opts = options_of(argv)
    assert argv[0] == "/usr/bin/sftp" and argv[-1] == "store.example.com"
    assert argv[argv.index("-F") + 1] == "/dev/null" and argv[argv.index("-P") + 1] == "2222"
    assert argv[argv.index("-b") + 1] == "-"  # the batch comes on stdin, not on a command line
    assert opts["StrictHostKeyChecking"] == "yes" and opts["UserKnownHostsFile"] == "/etc/gs/known_hosts"
    assert opts["GlobalKnownHostsFile"] == "/dev/null" and opts["UpdateHostKeys"] == "no"
    assert opts["IdentitiesOnly"] == "yes" and opts["IdentityFile"] == "/etc/gs/id_ed25519"
    assert opts["IdentityAgent"] == "none" and opts["BatchMode"] == "yes" and opts["User"] == "glancesync"


@pytest.mark.parametrize("host", ["-oProxyCommand=x", "a b", "h;id"])
def test_hosts_that_could_be_options_are_refused(host):
    with pytest.raises(SourceRefused):
        sftp_openssh.command(SshStore(host=host, port=22, user="u", private_key_file="k", known_hosts_file="kh",
                                      store_dir="/s"), "sftp", 5.0)


def test_ipv6_host_is_bracketed():
    store = SshStore(host="::1", port=22, user="u", private_key_file="k", known_hosts_file="kh", store_dir="/s")
    assert sftp_openssh.command(store, "sftp", 5.0)[-1] == "[::1]"


def test_batch_gets_the_chroot_mapped_path_and_resumes_with_reget():
    remote = sshconnect.remote_path(STORE, "/srv/store/images/0b3c-uuid")
    assert remote == "/images/0b3c-uuid"
    assert sftp_openssh.batch(remote, "/w/i.part", resume=False) == 'get "/images/0b3c-uuid" "/w/i.part"\n'
    assert sftp_openssh.batch(remote, "/w/i.part", resume=True) == 'reget "/images/0b3c-uuid" "/w/i.part"\n'


@pytest.mark.parametrize("path", ['/a/b"c', "/a/b\nget /etc/shadow", "/a/b'c", "/a/*", "/a/b c", "/a/\\x",
                                  "relative", "/a//b", "/a/?", "/a/[x]", "/a/$HOME"])
def test_paths_sftp_would_not_read_literally_are_refused(path):
    with pytest.raises(SourceRefused) as info:
        sftp_openssh.plain_path("img", path, "remote")
    assert info.value.retryable is False


def test_a_glance_store_path_passes():
    path = "/images/6f1c2e9a-7b7d-4e0a-9a4b-2f4c3a1d9e01"
    assert sftp_openssh.plain_path("img", path, "remote") == path


def fake_sftp(tmp_path, body: str) -> str:
    script = tmp_path / "fake-sftp"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_stalled_sftp_is_killed_and_the_failure_is_retryable(tmp_path):
    dest = tmp_path / "img.part"
    dest.touch()
    pid_file = tmp_path / "pid"
    # Writes a part of the file, then hangs with no new byte (a dead link).
    binary = fake_sftp(tmp_path, f'echo $$ > {pid_file}\nhead -c 70000 /dev/zero >> {dest}\nexec sleep 600\n')
    with pytest.raises(TransferError) as info:
        sftp_openssh.run(STORE, "img", "/images/x", str(dest), (hashlib.md5(),), lambda done: None,
                         idle_timeout=1.0, connect_timeout=5.0, binary=binary)
    assert info.value.retryable is True and "no new byte for 1 s" in str(info.value)
    assert dest.stat().st_size == 70000  # kept for a resume
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # killed and reaped


def test_the_batch_reaches_sftp_on_stdin_and_no_shell_is_involved(tmp_path):
    dest = tmp_path / "img.part"
    dest.write_bytes(b"abc")
    seen = tmp_path / "seen"
    binary = fake_sftp(tmp_path, f'cat > {seen}\nprintf def >> {dest}\nprintf "%s\\n" "$@" > {seen}.argv\n')
    size, digests = sftp_openssh.run(STORE, "img", "/images/x", str(dest), (hashlib.md5(),), lambda d: None,
                                     idle_timeout=30.0, connect_timeout=5.0, binary=binary)
    assert size == 6 and digests == (hashlib.md5(b"abcdef").hexdigest(),)
    assert seen.read_text() == f'reget "/images/x" "{dest}"\n'
    assert (tmp_path / "seen.argv").read_text().splitlines()[-1] == "store.example.com"


def test_popen_gets_an_argument_list_without_a_shell(tmp_path, monkeypatch):
    calls = []

    class Stop(Exception):
        pass

    def popen(argv, **kwargs):
        calls.append((argv, kwargs))
        raise Stop

    monkeypatch.setattr(subprocess, "Popen", popen)
    dest = tmp_path / "i.part"
    dest.touch()
    with pytest.raises(Stop):
        sftp_openssh.run(STORE, "img", "/images/x", str(dest), (hashlib.md5(),), lambda d: None, 30.0, 5.0)
    argv, kwargs = calls[0]
    assert isinstance(argv, list) and not kwargs.get("shell") and "/images/x" not in " ".join(argv)


@pytest.mark.parametrize(
    ("stderr", "kind", "text"),
    [
        ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n",
         SourceRefused, "host key of store.example.com:2222 does not match /etc/gs/known_hosts"),
        ("No ED25519 host key is known for [store.example.com]:2222 and you have requested strict checking.\n"
         "Host key verification failed.\n", SourceRefused, "is not in known_hosts file /etc/gs/known_hosts"),
        ("glancesync@store.example.com: Permission denied (publickey).\nConnection closed\n", SourceRefused,
         "refused key /etc/gs/id_ed25519"),
        ('File "/images/x" not found.\n', TransferError, "/images/x not found on store.example.com"),
        ("ssh: connect to host store.example.com port 2222: Connection refused\nConnection closed\n",
         TransferError, "cannot connect to store.example.com:2222"),
        ("weird\x1b[31m\n", TransferError, "exited with status 1: weird"),
    ],
)
def test_sftp_failures_become_one_line_reasons(stderr, kind, text):
    error = sftp_openssh.failure(STORE, "img", "/images/x", "/nonexistent/i.part", 1, stderr)
    assert type(error) is kind and text in str(error) and "\n" not in str(error) and "\x1b" not in str(error)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] == "Z"  # dead, waiting for its new parent
    except FileNotFoundError:
        return True


def test_sftp_dies_with_its_worker(tmp_path):
    """A worker killed mid-transfer (kill -9, pool timeout) takes its sftp along: no orphan keeps writing."""
    import sys
    import time

    dest = tmp_path / "img.part"
    dest.touch()
    pid_file = tmp_path / "pid"
    binary = fake_sftp(tmp_path, f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}\nexec sleep 600\n")
    code = ("import hashlib, sys; from agent import sftp_openssh; from glancesync.storemap import SshStore; "
            "store = SshStore(host='h', port=22, user='u', private_key_file='k', known_hosts_file='kh', "
            "store_dir='/s'); sftp_openssh.run(store, 'i', '/s/x', sys.argv[1], (hashlib.md5(),), "
            "lambda d: None, 600.0, 5.0, sys.argv[2])")
    worker = subprocess.Popen([sys.executable, "-c", code, str(dest), binary], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            assert worker.poll() is None and time.monotonic() < deadline, "the fake sftp never started"
            time.sleep(0.05)
        sftp_pid = int(pid_file.read_text())
        assert not _gone(sftp_pid)
        worker.kill()
        worker.wait()
        while not _gone(sftp_pid):
            assert time.monotonic() < deadline, "sftp outlived its worker"
            time.sleep(0.05)
    finally:
        worker.kill()
        worker.wait()
