"""Client keys and their roles: the allow-list directory read into a role map, reloaded live.

With ``[curve] enabled`` every client public key the coordinator admits sits in
``allowed_clients_dir``, and *where* it sits is its role::

    allowed_clients_dir/agent/<region>/<name>.key   the agent of that region only
    allowed_clients_dir/sender/<name>.key           glance_proxy event senders
    allowed_clients_dir/status/<name>.key           glance-sync-status readers
    allowed_clients_dir/operator/<name>.key         events, status and operator requests

``SENDS`` says which message types each role may send.  The ZAP handler
(:class:`ClientAuth`, pyzmq's ThreadAuthenticator with this map as its credentials
provider) admits a connection only for a key in the map and gives it the key's z85
public key as its ZAP User-Id; the coordinator reads that User-Id off every message
and looks the key up in the *current* map, so a key removed from the directory is
refused for new connections and for further messages on old ones alike.

``AllowList.refresh`` re-reads the directory when a cheap signature (the stat of
each directory and key file) changed, or when forced (SIGHUP).  At start any
misplaced or unreadable key stops the service (fail closed, one line naming the
file); on a reload such a file is left out with one ERROR line and the rest is used.
Without CURVE there are no keys and no roles: every peer is :data:`LOCAL` and may
send everything, which is why the coordinator then binds loopback addresses only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from glancesync.exceptions import KeyLoadError

LOG = logging.getLogger(__name__)

AGENT, SENDER, STATUS, OPERATOR = "agent", "sender", "status", "operator"
ROLES = (AGENT, SENDER, STATUS, OPERATOR)
AGENT_MESSAGES = ("hello", "ready", "ack", "progress", "done", "failed", "heartbeat", "bye")
# Who may send what. Message types are distinct per socket, so one table serves both.
# status_query is not given to senders: a glance-api host has no need to read the sync state.
SENDS: dict[str, frozenset[str]] = {
    **{msg_type: frozenset({AGENT}) for msg_type in AGENT_MESSAGES},
    "event": frozenset({SENDER, OPERATOR}),
    "status_query": frozenset({STATUS, OPERATOR}),
    # cancel, resync --failed, sync: glance-sync-manage with an operator key only.
    "operator": frozenset({OPERATOR}),
}
KEY_SUFFIX = ".key"
# Unknown keys logged once each, up to this many, so a stranger's reconnect loop
# (every 100 ms by default) does not fill the log.
MAX_REMEMBERED_STRANGERS = 1000


@dataclass(frozen=True)
class Peer:
    """Who sent a message: a key's role, its file (relative to the allow-list) and region."""

    role: str
    name: str
    region: str | None = None

    def may_send(self, msg_type: str) -> bool:
        return self is LOCAL or self.role in SENDS.get(msg_type, ())


# Every peer when CURVE is off: loopback only, everything trusted.
LOCAL = Peer(role="local", name="local peer (no CURVE)")


def key_path(allowed_dir: str, role: str, name: str, region: str | None = None) -> str:
    """Where the public key ``name`` of ``role`` (and ``region`` for agents) belongs."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if (role == AGENT) != bool(region):
        raise ValueError("an agent key needs its region" if role == AGENT else f"a {role} key has no region")
    for what, value in (("name", name), ("region", region or "x")):
        if not value or value.startswith(".") or "/" in value or "\\" in value:
            raise ValueError(f"{what} {value!r} cannot be a file name")
    parts = [allowed_dir, role, *([region] if region else []), name + KEY_SUFFIX]
    return os.path.join(*parts)


def _entries(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _read_role_dir(directory: str, rel: str, role: str, region: str | None,
                   found: dict[str, list[Peer]], problems: list[str]) -> None:
    """Load the key files of one role directory; ``rel`` is its path inside the allow-list."""
    for entry in _entries(directory):
        name = f"{rel}/{entry.name}"
        if entry.is_dir():
            problems.append(f"{name}: unexpected directory among the {role} keys; remove it")
            continue
        if not entry.name.endswith(KEY_SUFFIX):
            continue
        try:
            public, _ = zmq.auth.load_certificate(entry.path)
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: not a public key file: {exc}")
            continue
        found.setdefault(public.decode("ascii"), []).append(Peer(role, name, region))


def scan(allowed_dir: str) -> tuple[dict[str, Peer], list[str]]:
    """(z85 public key -> Peer, problems) for the layout under ``allowed_dir``."""
    found: dict[str, list[Peer]] = {}
    problems: list[str] = []
    for entry in _entries(allowed_dir):
        if entry.is_file() and entry.name.endswith(KEY_SUFFIX):
            problems.append(f"{entry.name} sits directly in allowed_clients_dir (the old layout): move it to "
                            f"agent/<region>/, sender/, status/ or operator/ there, as its role is "
                            f"(doc/keys-and-roles.md)")
        elif entry.is_dir() and entry.name not in ROLES:
            problems.append(f"{entry.name}/: not a role directory ({', '.join(ROLES)})")
        elif entry.is_dir() and entry.name == AGENT:
            for region in _entries(entry.path):
                if region.is_dir():
                    _read_role_dir(region.path, f"{AGENT}/{region.name}", AGENT, region.name, found, problems)
                elif region.name.endswith(KEY_SUFFIX):
                    problems.append(f"agent/{region.name}: an agent key belongs in agent/<region>/")
        elif entry.is_dir():
            _read_role_dir(entry.path, entry.name, entry.name, None, found, problems)
    peers: dict[str, Peer] = {}
    for public, holders in found.items():
        if len(holders) > 1:
            # One key, two roles: which one was meant cannot be guessed, so neither holds.
            problems.append(f"one public key in {' and '.join(p.name for p in holders)}: refused in both")
        else:
            peers[public] = holders[0]
    return peers, problems


def _signature(allowed_dir: str) -> tuple[Any, ...]:
    """Stat of every directory and key file of the layout: changes whenever a key does."""
    sig: list[tuple[Any, ...]] = []
    stack = [allowed_dir]
    while stack:
        directory = stack.pop()
        st = os.stat(directory)
        sig.append((directory, st.st_mtime_ns, st.st_ino))
        for entry in _entries(directory):
            if entry.is_dir():
                if directory == allowed_dir or os.path.basename(directory) == AGENT:
                    stack.append(entry.path)
            elif entry.name.endswith(KEY_SUFFIX):
                st = entry.stat()
                sig.append((entry.path, st.st_mtime_ns, st.st_ino, st.st_size))
    return tuple(sig)


class AllowList:
    """The current role map of ``allowed_dir``; lookups by z85 public key (the ZAP User-Id)."""

    def __init__(self, allowed_dir: str) -> None:
        self.allowed_dir = allowed_dir
        self.peers: dict[str, Peer] = {}
        self.former: dict[str, Peer] = {}  # keys since removed, to name them in refusals
        self._signature: tuple[Any, ...] | None = None
        self._strangers: set[bytes] = set()

    def load(self) -> None:
        """The first read: any problem, or no key at all, stops the service."""
        if not self.allowed_dir or not os.path.isdir(self.allowed_dir):
            raise KeyLoadError(path=self.allowed_dir or "<unset>", detail="allowed_clients_dir is not a directory")
        signature = _signature(self.allowed_dir)
        peers, problems = scan(self.allowed_dir)
        if problems:
            raise KeyLoadError(path=self.allowed_dir, detail="; ".join(problems))
        if not peers:
            raise KeyLoadError(path=self.allowed_dir, detail="allowed_clients_dir holds no .key file in "
                               f"{', '.join(ROLES)}/")
        self.peers, self._signature = peers, signature
        LOG.info("client keys: %s", self._counts())

    def refresh(self, force: bool = False) -> bool:
        """Re-read the directory if it changed (or ``force``); True when the map was replaced."""
        try:
            signature: tuple[Any, ...] | None = _signature(self.allowed_dir)
        except OSError:
            signature = None
        if signature == self._signature and not force:
            return False  # unchanged, or still unreadable (said so already)
        try:
            peers, problems = scan(self.allowed_dir)
        except OSError as exc:
            # The directory itself is gone or unreadable: fail closed, nobody is admitted.
            signature, peers, problems = None, {}, [f"cannot read it ({exc.strerror}); no client is admitted"]
        for problem in problems:
            LOG.error("allowed_clients_dir %s: %s", self.allowed_dir, problem)
        removed = sorted(p.name for k, p in self.peers.items() if peers.get(k) != p)
        added = sorted(p.name for k, p in peers.items() if self.peers.get(k) != p)
        self.former.update({k: p for k, p in self.peers.items() if k not in peers})
        for key in peers:
            self.former.pop(key, None)
        self.peers, self._signature = peers, signature
        self._strangers.clear()
        LOG.info("client keys reloaded: %s; added: %s; removed: %s", self._counts(),
                 ", ".join(added) or "none", ", ".join(removed) or "none")
        return True

    def _counts(self) -> str:
        counts = {role: 0 for role in ROLES}
        for peer in self.peers.values():
            counts[peer.role] += 1
        return ", ".join(f"{n} {role}" for role, n in counts.items())

    def lookup(self, user_id: str | None) -> Peer | None:
        """The peer of a ZAP User-Id on the current map; None for a key not (or no longer) on it."""
        return self.peers.get(user_id) if user_id else None

    def describe(self, user_id: str | None) -> str:
        """A key's file name for a log line, also for a removed key; never secret material."""
        peer = self.lookup(user_id) or self.former.get(user_id or "")
        if peer is not None:
            return peer.name
        return f"unknown key {user_id[:8]}..." if user_id else "a peer without a key"

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook (authenticator thread): is this z85 key admitted?"""
        if key.decode("ascii", "replace") in self.peers:
            return True
        if key not in self._strangers and len(self._strangers) < MAX_REMEMBERED_STRANGERS:
            self._strangers.add(key)
            name = self.former.get(key.decode("ascii", "replace"))
            LOG.warning("CURVE handshake refused: %s", f"{name.name} was removed from the allow-list"
                        if name else f"public key {key[:8].decode('ascii', 'replace')}... is not on the allow-list")
        return False


class ClientAuth:
    """The coordinator's CURVE door: a ZAP authenticator thread that consults an AllowList."""

    def __init__(self, context: zmq.Context, allowed_dir: str) -> None:
        self.allow_list = AllowList(allowed_dir)
        self.allow_list.load()
        self._auth: ThreadAuthenticator | None = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self.allow_list)

    def peer(self, user_id: str | None) -> Peer | None:
        return self.allow_list.lookup(user_id)

    def describe(self, user_id: str | None) -> str:
        return self.allow_list.describe(user_id)

    def refresh(self, force: bool = False) -> bool:
        return self.allow_list.refresh(force)

    def is_alive(self) -> bool:
        return self._auth is not None and self._auth.is_alive()

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
