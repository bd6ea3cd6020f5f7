"""The replies of one loop iteration that wait for its journal commit, in the order peers asked.

An ``event_ack``, a ``result_ack`` or an operator's reply promises that what it answers is
durable, so it leaves only once the iteration's batch has committed (service.py).  A
``status_reply`` reads committed state and may leave at once, but not ahead of an earlier
reply to the same connection: a sender that sends an event and then asks for the status
gets the ``event_ack`` first.  So once a connection has a reply waiting, its later replies
of the iteration wait too, behind it.

When the commit fails, the replies that acknowledge or read the batch's writes are
withheld (the peers send again); the others (a summary, an error) still go.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Reply(NamedTuple):
    sock: Any  # the zmq socket
    envelope: list[bytes]
    payload: bytes
    # It acknowledges or reads the batch's writes: withheld when the commit fails.
    acks: bool


class AfterCommit:
    """The iteration's waiting replies, and the connections that have one."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self._waiting: set[tuple[int, bytes]] = set()

    def __len__(self) -> int:
        return len(self.replies)

    def add(self, sock: Any, envelope: list[bytes], payload: bytes, acks: bool = True) -> None:
        self.replies.append(Reply(sock, envelope, payload, acks))
        self._waiting.add((id(sock), envelope[0]))

    def waiting(self, sock: Any, routing_id: bytes) -> bool:
        """Whether the connection has a reply waiting: a later one must wait behind it."""
        return (id(sock), routing_id) in self._waiting

    def send_behind(self, sock: Any, envelope: list[bytes], payload: bytes,
                    send: Callable[[Any, list[bytes], bytes], bool]) -> bool:
        """Send a reply that acknowledges nothing (an error) now, or behind the connection's
        waiting reply if it has one; it goes even if the commit fails."""
        if self.waiting(sock, envelope[0]):
            self.add(sock, envelope, payload, acks=False)
            return True
        return send(sock, envelope, payload)

    def withhold(self) -> int:
        """The commit failed: drop the replies that acknowledge it; how many were dropped."""
        kept = [reply for reply in self.replies if not reply.acks]
        dropped = len(self.replies) - len(kept)
        self.replies = kept
        return dropped

    def take(self) -> list[Reply]:
        """Every waiting reply, in the order they were added; the queue starts empty again."""
        replies, self.replies = self.replies, []
        self._waiting.clear()
        return replies
