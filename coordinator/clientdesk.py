"""The client socket (``sync_server_port``): events, status queries and operator requests.

The socket itself belongs to the status thread (statusdesk.py): it answers the summary
queries from the snapshot this loop publishes after each commit (``publish_summary``)
and passes every other frame here over an inproc pipe (``client_sock``, the loop's end).

An ``event`` is journaled in the iteration's batch and acknowledged once it commits; so
is an operator's request.  A ``status_query`` writes nothing and reads committed state:
it is answered as soon as it is read (an image view after a write of the same batch
waits for the commit), except behind an earlier reply to the same connection that
waits for the commit (coordinator/replies.py): a connection gets its replies in the
order it sent the requests.  A summary that reaches the loop (its connection had a
frame here) is answered from the published snapshot too.  Once the iteration's replies
left, the thread is told which frames are finished (``client_frames_done``), so that
it answers that connection's next summary itself again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from coordinator import status
from coordinator.dialog import peer_name
from coordinator.statusdesk import LoopEnd, StatusDesk
from glancesync import protocol
from glancesync.exceptions import GlanceSyncError, ProtocolError

LOG = logging.getLogger(__name__)
# Frames of the client socket one iteration takes at most (and fewer once its budget is spent).
CLIENT_FRAMES = 1000


class ClientMixin:
    """The service's client frames (``coordinator.service.Service``: its pipe, status thread, journal, desks)."""

    client_sock: LoopEnd | None
    status_desk: StatusDesk | None
    # Routing ids of the frames taken in this iteration, one per frame: DONE once their replies left.
    _client_handled: list[bytes]
    # The events taken and not journaled yet: (envelope, message id, body, sender), in the order they came.
    _taken_events: list[tuple[list[bytes], str | None, dict[str, Any], str]]

    def take_client_frames(self, now: float) -> None:
        """Handle the frames the status thread passed on, in their order (inside the batch)."""
        for count in range(CLIENT_FRAMES):
            if count and time.monotonic() > self._deadline:
                break  # the rest waits in the pipe for the next iteration
            got = self.client_sock.recv() if self.client_sock is not None else None
            if got is None:
                break
            frames, key = got
            self._client_handled.append(frames[0])
            try:
                self._client_frame(frames, now, key)
            except Exception:
                LOG.exception("frame from %s could not be handled", peer_name(frames[0]))
        self._record_events(now)

    def client_frames_done(self) -> None:
        """Tell the status thread the iteration's frames are finished (after their replies)."""
        handled, self._client_handled = self._client_handled, []
        if handled and self.client_sock is not None:
            self.client_sock.done(handled)

    def publish_summary(self) -> None:
        """Hand the status thread the summary as committed now (after the batch, before its replies)."""
        if self.status_desk is None:
            return
        lease = None if self.leadership is None else self.leadership.view
        try:
            self.status_desk.publish(self.summary.data(self.regions, self.started_at, self.now,
                                                       self.events.strategy_in_force, lease))
        except Exception:  # the thread keeps answering with the last one
            LOG.exception("the status summary could not be packed")

    def may_ask_status(self, key: str | None) -> bool:
        """Whether ``key`` may send a status_query (the status thread's check; refusals are the loop's)."""
        return self._may_send(key, "status_query")

    def _may_send(self, key: str | None, msg_type: str) -> bool:
        if self.auth is None:
            return True  # no CURVE: loopback only, every local peer is trusted
        peer = self.auth.peer(key)
        return peer is not None and peer.may_send(msg_type)

    def _client_frame(self, frames: list[bytes], now: float, key: str | None = None) -> None:
        envelope, payload = frames[:-1], frames[-1]
        if not envelope:
            return
        ref, acks = None, True
        try:
            msg = protocol.decode(payload)
            ref = msg.id
            if msg.type != "event" or not self._may_send(key, msg.type):
                # Any reply to this frame, a refusal too, comes after the acks of the events before it.
                self._record_events(now)
            if msg.type not in ("event", "status_query", "operator"):
                raise ProtocolError(code="unexpected", detail=f"{msg.type} is not served on this socket")
            peer = self._admitted(self.client_sock, envelope, key, msg)
            if peer is None:
                return
            if msg.type == "event":
                # Recorded with the iteration's other events (``_record_events``), acked in their order.
                self._taken_events.append((envelope, ref, msg.body, f"{peer.name} ({peer_name(envelope[0])})"))
                return
            if msg.type == "operator":
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
            self._record_events(now)  # an undecodable frame's error too comes after the acks before it
            LOG.warning("client peer %s: refused frame: %s", peer_name(envelope[0]), exc)
            reply, acks = protocol.error_reply(exc, ref), False
        except GlanceSyncError as exc:
            LOG.error("client peer %s: cannot serve: %s", peer_name(envelope[0]), exc)
            reply, acks = protocol.encode("error", {"code": "unavailable", "reason": str(exc), "ref": ref}), False
        # An event_ack promises the event is durable: it waits for the batch's commit, and so does
        # every later reply to the same connection.
        self._after_commit.add(self.client_sock, envelope, reply, acks)

    def _record_events(self, now: float) -> None:
        """Journal the events taken so far, together, and queue their acks (sent after the commit)."""
        taken, self._taken_events = self._taken_events, []
        if not taken:
            return
        # Durable first, ack second: the sender forgets the event once acked. The sender is
        # kept with the event: a refused delete names it.
        try:
            fresh = self.journal.record_events(
                [(body["event_id"], body["kind"], body["image_id"], body, sender) for _env, _ref, body, sender in taken], now)
        except GlanceSyncError as exc:
            LOG.error("%d event(s) could not be journaled: %s", len(taken), exc)
            for envelope, ref, _body, _sender in taken:
                self._after_commit.add(self.client_sock, envelope, protocol.encode(
                    "error", {"code": "unavailable", "reason": str(exc), "ref": ref}), False)
            return
        for (envelope, _ref, body, sender), new in zip(taken, fresh, strict=True):
            self.metrics.event_received(new)
            if new:
                LOG.info("event %s: %s of image %s from %s", body["event_id"], body["kind"], body["image_id"], sender)
            else:
                LOG.info("event %s: duplicate, acked again", body["event_id"])
            self._after_commit.add(self.client_sock, envelope,
                                   protocol.encode("event_ack", {"event_id": body["event_id"]}), True)

    def _status(self, body: dict[str, Any]) -> bytes:
        if body["view"] == "image" and not body.get("image_id"):
            raise ProtocolError(code="missing_field", detail="status_query.image_id is required for view image")
        lease = None if self.leadership is None else self.leadership.view
        if body["view"] != "image":  # the summary: as last committed, what the status thread answers too
            if self.status_desk is None or self.status_desk.snapshot is None:
                self.publish_summary()
            return protocol.encode_prepacked("status_reply", {"view": body["view"]},
                                             {"data": self.status_desk.snapshot})
        data = status.build(self.journal, self.agents, self.regions, self.started_at, body, self.now,
                            self.events.strategy_in_force, self.tasks.rates, lease)
        return protocol.encode("status_reply", {"view": body["view"], "data": data})

