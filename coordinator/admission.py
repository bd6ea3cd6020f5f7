"""Who may send what to the coordinator: each message checked against its sender's key and role.

Every frame on both sockets comes with the CURVE key of its sender (the ZAP User-Id);
``glancesync.roles`` says which message types each role may send (an agent key only
agent messages, of its own region; a sender key events...).  A refused message is
answered with ``error`` (behind any earlier reply to the same connection that waits for
the iteration's commit) and logged once.  The allow-list is read again when its file
changes (every ``[curve] reload_interval``) or on SIGHUP, and sessions whose key left
it are closed.  Without CURVE (loopback only) every local peer is trusted.
"""

from __future__ import annotations

import logging

import zmq

from coordinator.dialog import peer_name
from glancesync import protocol, roles

LOG = logging.getLogger(__name__)


class AdmissionMixin:
    """The service's checks of senders (``coordinator.service.Service``: its auth, sockets, agents, replies)."""

    def _admitted(self, sock: zmq.Socket | None, envelope: list[bytes], key: str | None,
                  msg: protocol.Message) -> roles.Peer | None:
        """The sender's role if it may send ``msg``; otherwise an error reply, one log line, None."""
        if self.auth is None:
            return roles.LOCAL  # no CURVE: loopback only, every local peer is trusted
        peer = self.auth.peer(key)
        if peer is not None and peer.may_send(msg.type):
            return peer
        if peer is None:
            code, reason = "forbidden", "this key is not (or no longer) on the coordinator's allow-list"
        else:
            code, reason = "forbidden", f"a {peer.role} key may not send {msg.type}"
        LOG.warning("peer %s: %s refused: key %s: %s", peer_name(envelope[0]), msg.type,
                    self.auth.describe(key), reason)
        refusal = protocol.encode("error", {"code": code, "reason": reason, "ref": msg.id})
        # Not ahead of an earlier reply to the same connection that waits for the commit
        # (replies.py); the refusal acknowledges nothing, so it goes even if the commit fails.
        self._after_commit.send_behind(sock, envelope, refusal, self._send)
        return None

    def request_reload(self) -> None:
        """Re-read the allow-list at the next iteration (SIGHUP; safe in a signal handler)."""
        self._reload_keys = True

    def _keys(self, now: float) -> None:
        if self.auth is None:
            return
        forced, self._reload_keys = self._reload_keys, False
        if not forced and now - self._keys_checked < self.conf.curve.reload_interval:
            return
        self._keys_checked = now
        if self.auth.refresh(force=forced):
            self.agents.revoke(self._agent_key_admitted)

    def _agent_key_admitted(self, key: str, region: str) -> bool:
        peer = self.auth.peer(key) if self.auth is not None else None
        return peer is not None and peer.role == roles.AGENT and peer.region == region
