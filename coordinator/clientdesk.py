"""The client socket (``sync_server_port``): events, status queries and operator requests.

An ``event`` is journaled in the iteration's batch and acknowledged once it commits; so
is an operator's request.  A ``status_query`` writes nothing and reads committed state:
it is answered as soon as it is read (an image view after a write of the same batch
waits for the commit), except behind an earlier reply to the same connection that
waits for the commit (coordinator/replies.py): a connection gets its replies in the
order it sent the requests.  The summary comes from pieces packed when they changed
(statuscache.py).

``answer_summaries`` runs before the iteration's transaction opens: the summaries
waiting on the socket are answered without waiting for its BEGIN, the agents' frames
or any step; every other frame (and any later frame of a connection whose earlier one
was put off) waits for the batch, in the order it came.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import zmq

from coordinator import status
from coordinator.dialog import peer_name
from glancesync import protocol, transport
from glancesync.exceptions import GlanceSyncError, ProtocolError

LOG = logging.getLogger(__name__)
# Frames answer_summaries reads at most in one iteration (and none once its budget is spent).
EARLY_FRAMES = 1000


class ClientMixin:
    """The service's client socket (``coordinator.service.Service``: its sockets, journal, desks)."""

    # Frames answer_summaries read and left for the batch, with their senders' keys.
    _client_later: list[tuple[list[bytes], str | None]]

    def answer_summaries(self, now: float) -> None:
        """Answer the summary queries waiting on the client socket; keep the other frames for the batch."""
        # A connection with a frame put off (here, or by an iteration whose batch never opened)
        # has its later frames put off too, behind it.
        put_off = {frames[0] for frames, _key in self._client_later}
        for frames, key in self._waiting_frames():
            if len(frames) > 1 and frames[0] not in put_off and _summary_query(frames[-1]):
                try:
                    self._client_frame(frames, now, key)
                except Exception:
                    LOG.exception("frame from %s could not be handled", peer_name(frames[0]))
            else:
                self._client_later.append((frames, key))
                put_off.add(frames[0])

    def _waiting_frames(self) -> Iterator[tuple[list[bytes], str | None]]:
        """The client socket's frames and their senders' keys, as many as the iteration's budget takes."""
        for count in range(EARLY_FRAMES):
            if count and time.monotonic() > self._deadline:
                return  # the rest waits in the socket for the next iteration
            try:
                parts = self.client_sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                LOG.error("receive failed: %s", exc)
                return
            # Who sent it: the ZAP User-Id (the CURVE key) travels with each message.
            yield [part.bytes for part in parts], transport.peer_key(parts[-1]) if self.auth is not None else None

    def put_off_frames(self, now: float) -> None:
        """Handle the frames answer_summaries put off, in their order (inside the batch)."""
        later, self._client_later = self._client_later, []
        for frames, key in later:
            try:
                self._client_frame(frames, now, key)
            except Exception:
                LOG.exception("frame from %s could not be handled", peer_name(frames[0]))

    def _client_frame(self, frames: list[bytes], now: float, key: str | None = None) -> None:
        envelope, payload = frames[:-1], frames[-1]
        if not envelope:
            return
        ref, acks = None, True
        try:
            msg = protocol.decode(payload)
            ref = msg.id
            if msg.type not in ("event", "status_query", "operator"):
                raise ProtocolError(code="unexpected", detail=f"{msg.type} is not served on this socket")
            peer = self._admitted(self.client_sock, envelope, key, msg)
            if peer is None:
                return
            if msg.type == "event":
                reply = self._event(msg.body, now, f"{peer.name} ({peer_name(envelope[0])})")
            elif msg.type == "operator":
                data = self.operator.request(msg.body, now, f"{peer.name} ({peer_name(envelope[0])})")
                reply = protocol.encode("operator_reply", {"action": msg.body["action"], "data": data})
            else:
                reply = self._status(msg.body)
                # It wrote nothing and read only committed state: nothing to wait for, unless an
                # earlier reply to the same connection waits for the commit (an event_ack).
                acks = msg.body["view"] == "image" and self.journal.writes != self._writes_before
                if not acks and not self._after_commit.waiting(self.client_sock, envelope[0]):
                    self._send(self.client_sock, envelope, reply)
                    return
        except ProtocolError as exc:
            LOG.warning("client peer %s: refused frame: %s", peer_name(envelope[0]), exc)
            reply, acks = protocol.error_reply(exc, ref), False
        except GlanceSyncError as exc:
            LOG.error("client peer %s: cannot serve: %s", peer_name(envelope[0]), exc)
            reply, acks = protocol.encode("error", {"code": "unavailable", "reason": str(exc), "ref": ref}), False
        # An event_ack promises the event is durable: it waits for the batch's commit, and so does
        # every later reply to the same connection.
        self._after_commit.add(self.client_sock, envelope, reply, acks)

    def _event(self, body: dict[str, Any], now: float, sender: str) -> bytes:
        # Durable first, ack second: the sender forgets the event once acked. The sender is
        # kept with the event: a refused delete names it.
        fresh = self.journal.record_event(body["event_id"], body["kind"], body["image_id"], body, now, sender)
        self.metrics.event_received(fresh)
        if fresh:
            LOG.info("event %s: %s of image %s from %s", body["event_id"], body["kind"], body["image_id"], sender)
        else:
            LOG.info("event %s: duplicate, acked again", body["event_id"])
        return protocol.encode("event_ack", {"event_id": body["event_id"]})

    def _status(self, body: dict[str, Any]) -> bytes:
        if body["view"] == "image" and not body.get("image_id"):
            raise ProtocolError(code="missing_field", detail="status_query.image_id is required for view image")
        lease = None if self.leadership is None else self.leadership.view
        if body["view"] != "image":  # the summary: from the pieces packed when they changed
            data = self.summary.data(self.regions, self.started_at, self.now, self.events.strategy_in_force, lease)
            return protocol.encode_prepacked("status_reply", {"view": body["view"]}, {"data": data})
        data = status.build(self.journal, self.agents, self.regions, self.started_at, body, self.now,
                            self.events.strategy_in_force, self.tasks.rates, lease)
        return protocol.encode("status_reply", {"view": body["view"], "data": data})


def _summary_query(payload: bytes) -> bool:
    try:
        msg = protocol.decode(payload)
    except ProtocolError:
        return False  # answered with an error in the batch, in its turn
    return msg.type == "status_query" and msg.body["view"] == "summary"
