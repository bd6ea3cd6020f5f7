"""A private OpenSSH sshd on 127.0.0.1 for the end-to-end tests and the demo.

:class:`SshServer` runs the system's ``/usr/sbin/sshd`` in the foreground with its own
config, ed25519 host key, authorized_keys and pid file, on a free high port; it never
touches the system's sshd config.  It also makes a client key pair (public half
authorised), a ``known_hosts`` file pinning the host key as ``[127.0.0.1]:PORT
ssh-ed25519 ...`` and a *wrong* known_hosts file pinning another, fresh key, so tests
can check that an unknown host key is refused.

Readiness is a real paramiko connection with ``RejectPolicy`` that opens SFTP: the
harness never auto-adds host keys.

With ``chroot_dir`` (the cascading store directory) the account is confined the way
doc/least-privilege.md tells an operator to: a ``Match User`` block with
``ChrootDirectory``, ``ForceCommand internal-sftp -R`` (read-only SFTP, no shell, no
exec), no TTY and no forwarding.  sshd refuses a chroot unless every component of its
path is root-owned and not group- or world-writable, and pytest's directories live
under ``/tmp`` (mode 1777): then ChrootDirectory names a link in a root-only directory
under ``/run`` (sshd stats through it; the kernel chroots into its target).  Chrooting
needs root; the test topology confines the account only when it runs as root.
"""

from __future__ import annotations

import getpass
import os
import posixpath
import shutil
import stat
import subprocess
from pathlib import Path

import paramiko

from tests.harness.procs import LOOPBACK, ServiceError, ServiceProcess, free_port, read_tail

SSHD = "/usr/sbin/sshd"
# Where chroot links go when the store's own path would not pass sshd's checks.
CHROOT_LINK_DIR = Path("/run/glance-sync-test")


def sshd_accepts_chroot(path: Path) -> bool:
    """True when sshd would chroot into ``path``: every component root-owned, not g/o-writable."""
    for component in (path, *path.parents):
        info = component.stat()
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def ssh_keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at ``path`` (+ .pub); return the public line 'ssh-ed25519 AAAA...'."""
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise ServiceError("ssh-keygen not found: install openssh-client")
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    path.chmod(0o600)
    kind, blob = Path(f"{path}.pub").read_text().split()[:2]
    return f"{kind} {blob}"


class SshServer:
    """sshd with its own host key, config and client key, on 127.0.0.1:<free port>."""

    def __init__(
        self,
        base_dir: str | Path,
        *,
        port: int | None = None,
        user: str | None = None,
        chroot_dir: str | Path | None = None,
        also_authorized: str | Path | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.host = LOOPBACK
        self.port = port or free_port()
        self.user = user or getpass.getuser()
        self.config_file = self.base_dir / "sshd_config"
        self.host_key_file = self.base_dir / "ssh_host_ed25519_key"
        self.private_key_file = self.base_dir / "id_ed25519"
        self.authorized_keys_file = self.base_dir / "authorized_keys"
        self.known_hosts_file = self.base_dir / "known_hosts"
        self.wrong_known_hosts_file = self.base_dir / "known_hosts.wrong"
        self.pid_file = self.base_dir / "sshd.pid"
        self.log_path = self.base_dir / "sshd.log"
        self.process: ServiceProcess | None = None
        # The directory the account is confined to (it sees it as "/"); None: not confined.
        self.chroot_dir = Path(chroot_dir).resolve() if chroot_dir else None
        self.chroot_link = CHROOT_LINK_DIR / f"sftp-{self.port}"
        self.chroot_path: Path | None = None  # what sshd_config's ChrootDirectory names
        # Another client's public key file (the agents' key, for a region's cache server).
        self.also_authorized = Path(also_authorized) if also_authorized else None

    def __repr__(self) -> str:
        return f"<SshServer {self.user}@{self.host}:{self.port}>"

    def config_text(self) -> str:
        """The content of sshd_config."""
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key_file}",
            f"AuthorizedKeysFile {self.authorized_keys_file}",
            f"PidFile {self.pid_file}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            # Keys live under /tmp (world-writable): StrictModes would refuse them.
            "StrictModes no",
            "UseDNS no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            "LogLevel INFO",
            "Subsystem sftp internal-sftp",
        ]
        if self.chroot_path is not None:
            lines += [
                f"Match User {self.user}",
                f"    ChrootDirectory {self.chroot_path}",
                "    ForceCommand internal-sftp -R",
                "    PermitTTY no",
                "    DisableForwarding yes",
                "    PermitTunnel no",
                "    PermitUserRC no",
            ]
        return "\n".join([*lines, ""])

    def _prepare_chroot(self) -> None:
        """Make the chroot directory acceptable to sshd; link to it from /run when its path is not."""
        if self.chroot_dir is None:
            return
        if os.geteuid() != 0:
            raise ServiceError("a chrooted SFTP account needs sshd to run as root")
        self.chroot_dir.mkdir(parents=True, exist_ok=True)
        self.chroot_dir.chmod(0o755)
        if sshd_accepts_chroot(self.chroot_dir):
            self.chroot_path = self.chroot_dir
            return
        CHROOT_LINK_DIR.mkdir(mode=0o755, exist_ok=True)
        CHROOT_LINK_DIR.chmod(0o755)
        self.chroot_link.unlink(missing_ok=True)
        self.chroot_link.symlink_to(self.chroot_dir)
        self.chroot_path = self.chroot_link

    def sftp_path(self, path: str | Path) -> str:
        """The name the (possibly chrooted) account knows ``path`` by."""
        if self.chroot_dir is None:
            return str(path)
        return posixpath.normpath(posixpath.join("/", os.path.relpath(path, self.chroot_dir)))

    def write_config(self) -> None:
        """Keys, authorized_keys, known_hosts (right and wrong) and sshd_config."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privsep dir, needed when root
        except PermissionError:
            pass  # not root: sshd runs without privilege separation chroot
        host_pub = ssh_keygen(self.host_key_file, "glance-sync-test-host")
        client_pub = ssh_keygen(self.private_key_file, "glance-sync-test-client")
        wrong_pub = ssh_keygen(self.base_dir / "wrong_host_key", "glance-sync-test-wrong-host")
        also = self.also_authorized.read_text().strip() + "\n" if self.also_authorized else ""
        self.authorized_keys_file.write_text(client_pub + "\n" + also)
        self.authorized_keys_file.chmod(0o600)
        pattern = f"[{self.host}]:{self.port}"
        self.known_hosts_file.write_text(f"{pattern} {host_pub}\n")
        self.wrong_known_hosts_file.write_text(f"{pattern} {wrong_pub}\n")
        self._prepare_chroot()
        self.config_file.write_text(self.config_text())

    def host_public_key(self) -> str:
        """The host key's public line, 'ssh-ed25519 AAAA...' (after write_config)."""
        return " ".join(Path(f"{self.host_key_file}.pub").read_text().split()[:2])

    def command(self) -> list[str]:
        return [SSHD, "-D", "-e", "-f", str(self.config_file)]

    def connect(self, known_hosts_file: str | Path | None = None, timeout: float = 5.0) -> paramiko.SSHClient:
        """A connected paramiko SSHClient (RejectPolicy, host keys from ``known_hosts_file``)."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(known_hosts_file or self.known_hosts_file))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=str(self.private_key_file),
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except BaseException:
            client.close()
            raise
        return client

    def answers(self) -> bool:
        """True when an SFTP session with the pinned host key and the client key works."""
        client = self.connect(timeout=2.0)
        try:
            client.open_sftp().close()
            return True
        finally:
            client.close()

    def start(self, timeout: float = 30.0) -> SshServer:
        """Write keys and config, start sshd, wait until SFTP works."""
        if not Path(SSHD).exists():
            raise ServiceError(f"{SSHD} not found: install openssh-server (tools/bootstrap.sh does)")
        if self.process is None:
            self.write_config()
            self.process = ServiceProcess("sshd", self.command(), self.log_path, cwd=self.base_dir)
        elif self.chroot_path == self.chroot_link:
            self.chroot_link.unlink(missing_ok=True)
            self.chroot_link.symlink_to(self.chroot_dir)
        self.process.start()
        self.process.wait_ready(self.answers, timeout, interval=0.2)
        return self

    def stop(self) -> None:
        """Stop sshd (idempotent) and remove its chroot link."""
        if self.process is not None:
            self.process.stop()
        if self.chroot_path == self.chroot_link:
            self.chroot_link.unlink(missing_ok=True)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again: same port, host key and client key."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 30) -> str:
        return read_tail(self.log_path, lines)
