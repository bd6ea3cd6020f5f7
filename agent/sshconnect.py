"""The paramiko control connection to an SFTP account: pinned host keys, our key only, checked paths.

Every fetch over SFTP (agent/transfer.py from the store, agent/growing.py from a
peer's running copy) starts here.  Host keys come only from the account's
``known_hosts`` file (``RejectPolicy``: never auto-added), the client key from
``private_key_file``, no agent, no password.  :func:`check_regular` ``lstat``s every
component of a path below the store directory, so links and non-files are refused
whatever the server would follow.  The bulk bytes may then go another way
(OpenSSH's ``sftp``, agent/sftp_openssh.py); these checks stay paramiko's.
"""

from __future__ import annotations

import posixpath
import stat
from typing import Any

import paramiko

from glancesync.exceptions import SourceRefused, TransferError
from glancesync.storemap import SshStore

# paramiko's SFTP packet size (its own maximum read per request).
PACKET_BYTES = 32768


class _UnknownHostKey(paramiko.SSHException):
    pass


class _RejectUnknown(paramiko.RejectPolicy):
    """RejectPolicy that raises a type we can tell apart from other SSH errors."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise _UnknownHostKey(f"no {key.get_name()} host key for {hostname}")


def remote_path(store: SshStore, path: str) -> str:
    """The name the SFTP server knows ``path`` (a checked path in ``store_dir``) by.

    When sshd chroots the account into ``sftp_root``, the server shows that
    directory as ``/``: ``<sftp_root>/images/x`` is asked for as ``/images/x``.
    """
    if store.sftp_root is None:
        return path
    return posixpath.normpath(posixpath.join("/", posixpath.relpath(path, store.sftp_root)))


def connect(store: SshStore, image_id: str, timeout: float) -> paramiko.SSHClient:
    """An SSHClient to the store host, host key checked against ``known_hosts_file`` only."""
    where = f"{store.host}:{store.port}"
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(store.known_hosts_file)
    except OSError as exc:
        raise SourceRefused(
            image_id=image_id, detail=f"cannot read known_hosts file {store.known_hosts_file}: {exc.strerror}"
        ) from None
    client.set_missing_host_key_policy(_RejectUnknown())
    try:
        client.connect(
            store.host,
            port=store.port,
            username=store.user,
            key_filename=store.private_key_file,
            allow_agent=False,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException:
        client.close()
        raise SourceRefused(
            image_id=image_id,
            detail=f"host key of {where} does not match {store.known_hosts_file} (changed host key?)",
        ) from None
    except _UnknownHostKey:
        client.close()
        raise SourceRefused(
            image_id=image_id, detail=f"host {where} is not in known_hosts file {store.known_hosts_file}"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise SourceRefused(
            image_id=image_id, detail=f"{store.user}@{where} refused key {store.private_key_file}: {exc}"
        ) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise TransferError(image_id=image_id, detail=f"cannot connect to {where}: {exc}") from None
    # paramiko's own first cipher choice is aes128-ctr, its fastest here
    # (doc/glance-behaviour.md: gcm slower, no chacha20), so no cipher list is forced.
    return client


def check_regular(sftp: Any, store: SshStore, image_id: str, source_path: str) -> Any:
    """``lstat`` every component below ``store_dir``: directories, then a regular file, no links.

    ``checked_source`` only checks the path as text; the sftp server follows
    symbolic links, so a link in the store directory could otherwise hand out any
    file the store account can read.  Returns the file's attributes.
    """
    root = posixpath.normpath(store.store_dir)
    parts = posixpath.relpath(source_path, root).split("/")
    current = root
    for index, part in enumerate(parts):
        current = posixpath.join(current, part)
        attrs = sftp.lstat(remote_path(store, current))
        mode = attrs.st_mode or 0
        last = index == len(parts) - 1
        if stat.S_ISLNK(mode):
            raise SourceRefused(image_id=image_id, detail=f"{current} on {store.host} is a symbolic link")
        if last and not stat.S_ISREG(mode):
            raise SourceRefused(image_id=image_id, detail=f"{current} on {store.host} is not a regular file")
        if not last and not stat.S_ISDIR(mode):
            raise SourceRefused(image_id=image_id, detail=f"{current} on {store.host} is not a directory")
    return attrs


def open_sftp(client: paramiko.SSHClient, window_bytes: int) -> paramiko.SFTPClient:
    """An SFTP session whose window lets a WAN's bandwidth-delay product be in flight."""
    return paramiko.SFTPClient.from_transport(client.get_transport(), window_size=window_bytes,
                                              max_packet_size=PACKET_BYTES)
