"""Bulk image bytes through OpenSSH's ``sftp`` client, pinned to our key and our known_hosts.

OpenSSH moves bytes for about a third of paramiko's CPU (doc/performance.md), so
the agent runs ``sftp`` in batch mode to ``get`` (or ``reget``, resuming) the file
into the ``.part`` while :func:`agent.hashing.follow` hashes it as it grows.
paramiko still does the control part first (agent/transfer.py: the ``lstat`` of
every component, so links and non-files stay refused).

What ``sftp`` may use is fixed on its command line, nothing from the host: no
config file (``-F /dev/null``), host keys only from the store's ``known_hosts_file``
(``StrictHostKeyChecking=yes``, never updated), only the store's key, no agent, no
password prompt (``BatchMode``).  It runs from an argument list, never a shell,
and the paths travel in its batch on stdin, never on a remote command line.
``sftp`` splits batch lines itself (quotes, backslashes, globs), so a path is
refused unless every character is one that needs no quoting; glance's store
paths (a directory and a UUID) always pass.

The process dies with its worker (``PR_SET_PDEATHSIG``): a ``sftp`` that outlived
a killed worker would go on appending to a ``.part`` that the next attempt owns.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable

from agent import hashing
from glancesync import untrusted
from glancesync.exceptions import SourceRefused, TransferError
from glancesync.storemap import SshStore

DEFAULT_BINARY = "sftp"
# Characters sftp's batch parser treats as plain text, also inside globbing.
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/+,=@:-]*$")
_PLAIN_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$|^\[?[0-9A-Fa-f:.]+\]?$")
_PLAIN_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Client-side keepalive: a silent server is noticed even with no byte in flight.
ALIVE_INTERVAL = 15
ALIVE_COUNT = 4
PR_SET_PDEATHSIG = 1
# How much of sftp's stderr is kept for the failure reason.
STDERR_KEEP = 4096


def find_binary(name: str = DEFAULT_BINARY) -> str | None:
    """Absolute path of the sftp client, or None when it is not installed."""
    return shutil.which(name)


def plain_path(image_id: str, path: str, what: str) -> str:
    """``path`` unchanged if sftp's batch parser reads it as written; SourceRefused otherwise."""
    if not _PLAIN_PATH.match(path) or "//" in path:
        raise SourceRefused(
            image_id=image_id,
            detail=f"{what} path {untrusted.printable(path)[:200]!r} has characters sftp batch mode cannot take "
            "literally (allowed: letters, digits and ._/+,=@:-)",
        )
    return path


def command(store: SshStore, binary: str, connect_timeout: float, image_id: str = "-", limit: int = 0) -> list[str]:
    """The argument list of ``sftp`` for ``store``; the batch comes on stdin.

    ``limit``: ``sftp -l``, in OpenSSH's Kbit/s (1024 bit/s; agent/ratelimit.py); 0: none.
    """
    if not _PLAIN_HOST.match(store.host) or not _PLAIN_USER.match(store.user):
        raise SourceRefused(image_id=image_id, detail=f"store host {store.host!r} or user {store.user!r} is not a plain name")
    host = store.host.strip("[]")
    destination = f"[{host}]" if ":" in host else host
    options = {
        "BatchMode": "yes",
        "LogLevel": "ERROR",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": store.known_hosts_file,
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "IdentitiesOnly": "yes",
        "IdentityFile": store.private_key_file,
        "IdentityAgent": "none",
        "PreferredAuthentications": "publickey",
        "ControlMaster": "no",
        "ControlPath": "none",
        "ForwardAgent": "no",
        "ClearAllForwardings": "yes",
        "User": store.user,
        "ConnectTimeout": str(max(1, int(connect_timeout))),
        "ServerAliveInterval": str(ALIVE_INTERVAL),
        "ServerAliveCountMax": str(ALIVE_COUNT),
    }
    argv = [binary, "-F", "/dev/null", "-b", "-", "-P", str(store.port)]
    if limit > 0:
        argv += ["-l", str(int(limit))]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return [*argv, destination]


def batch(remote: str, local: str, resume: bool) -> str:
    """One batch line: ``get`` into an empty ``.part``, ``reget`` onto a non-empty one."""
    return f'{"reget" if resume else "get"} "{remote}" "{local}"\n'


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: one syscall, looked up beforehand.
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # sftp and the ssh it started
    except ProcessLookupError:
        pass
    process.wait()


def _spawn(argv: list[str], line: str, errors: object, image_id: str) -> subprocess.Popen:
    """``sftp`` started from ``argv`` with the batch ``line`` on its stdin, stderr into ``errors``."""
    try:
        process = subprocess.Popen(  # noqa: S603 - an argument list, no shell
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
            start_new_session=True, preexec_fn=_die_with_parent, close_fds=True,
        )
    except OSError as exc:
        raise TransferError(image_id=image_id, detail=f"cannot run {argv[0]}: {exc.strerror}") from None
    try:
        process.stdin.write(line.encode())
        process.stdin.close()
    except BrokenPipeError:
        pass  # it already exited: its status and stderr say why
    return process


def run(
    store: SshStore,
    image_id: str,
    remote: str,
    local: str,
    hashers: tuple,
    progress: Callable[[int], None],
    idle_timeout: float,
    connect_timeout: float,
    binary: str = DEFAULT_BINARY,
    on_start: Callable[[], None] | None = None,
    limit: int = 0,
    on_spawn: Callable[[subprocess.Popen], None] | None = None,
    hashed: int = 0,
) -> tuple[int, tuple[str, ...]]:
    """Fetch ``remote`` into ``local`` (resuming what ``local`` holds) while ``hashers`` hash all of it.

    Returns the size of ``local`` and the hex digests.  The hash threads start
    only once ``sftp`` runs, and so does whatever ``on_start()`` starts (the upload
    that follows the file): none of them runs when it forks.  ``limit``
    is ``sftp -l`` (see :func:`command`); ``on_spawn(process)`` is told the ``sftp``
    process (the bandwidth budget stops it while in debt, agent/budget.py).
    ``hashed``: the first bytes of ``local`` that ``hashers`` already hold (a
    follower's earlier run, agent/growing.py); they are not read again.  Raises
    SourceRefused (host key, key refused, permission) or TransferError (retryable:
    stalled, connection, missing file).
    """
    plain_path(image_id, remote, "remote")
    plain_path(image_id, local, "local")
    argv = command(store, binary, connect_timeout, image_id, limit)
    start = os.path.getsize(local)
    with tempfile.TemporaryFile() as errors:
        process = _spawn(argv, batch(remote, local, resume=start > 0), errors, image_id)
        if on_spawn is not None:
            on_spawn(process)
        sink = hashing.HashPipe(hashers)
        try:
            if on_start is not None:
                on_start()
            size = hashing.follow(local, sink, lambda: process.poll() is not None, progress, idle_timeout,
                                  lambda: _kill(process), report_from=start, start=hashed)
        except hashing.Stalled as exc:
            raise TransferError(image_id=image_id, detail=f"sftp of {remote} from {store.host}: {exc}; killed") from None
        except BaseException:
            _kill(process)
            raise
        finally:
            digests = sink.hexdigests()
        if process.returncode != 0:
            errors.seek(0)
            text = errors.read(STDERR_KEEP).decode(errors="replace")
            raise failure(store, image_id, remote, local, process.returncode, text)
    return size, digests


def failure(store: SshStore, image_id: str, remote: str, local: str, status: int, stderr: str) -> Exception:
    """One clear reason for a failed ``sftp`` run, from its exit status and stderr."""
    where = f"{store.host}:{store.port}"
    low = stderr.lower()
    if "remote host identification has changed" in low or "host key for" in low and "has changed" in low:
        return SourceRefused(image_id=image_id,
                             detail=f"host key of {where} does not match {store.known_hosts_file} (changed host key?)")
    if "host key is known for" in low or "host key verification failed" in low:
        return SourceRefused(image_id=image_id,
                             detail=f"host {where} is not in known_hosts file {store.known_hosts_file}")
    if "permission denied (" in low:
        return SourceRefused(image_id=image_id,
                             detail=f"{store.user}@{where} refused key {store.private_key_file}")
    if "not found" in low and remote in stderr:
        return TransferError(image_id=image_id, detail=f"{remote} not found on {store.host}")
    if "no space left" in low or "disk quota" in low:
        try:
            os.unlink(local)  # keeping it would hold the space that ran out
        except OSError:
            pass
        return TransferError(image_id=image_id, detail=f"work dir full writing {local}; partial file removed")
    if "permission denied" in low:
        return SourceRefused(image_id=image_id, detail=f"{remote}: permission denied on {store.host}")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = untrusted.printable(lines[-1])[:300] if lines else "no message"
    if "connection refused" in low or "connection timed out" in low or "could not resolve" in low:
        return TransferError(image_id=image_id, detail=f"cannot connect to {where}: {last}")
    return TransferError(image_id=image_id, detail=f"sftp from {where} exited with status {status}: {last}")
