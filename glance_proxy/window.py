"""The events of one sending round of the outbox: read from the spool, sent in order, forgotten when answered.

``EventSender`` (sender.py) keeps up to ``SEND_WINDOW`` events unacked on its socket;
this is their bookkeeping: ``fill`` reads the next events of the spool (oldest
first, after the newest already sent) and sends them, ``acked`` and ``refused``
forget one (its file is removed when the round ends, ``Spool.purge``), and whatever is still ``outstanding`` when
the round ends in silence is sent again by the next round, oldest first.  Each event
goes out under a fresh message id, which an ``error`` reply names in its ``ref``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgpack
import zmq

from glance_proxy.spool import Spool
from glancesync import protocol
from glancesync.exceptions import ProtocolError

LOG = logging.getLogger("glance_proxy.sender")


@dataclass
class Window:
    spool: Spool
    # message id -> (spool sequence, event id) of each event sent and not answered yet.
    outstanding: dict[str, tuple[int, str]] = field(default_factory=dict)
    by_event: dict[str, str] = field(default_factory=dict)
    last: int = 0  # the newest sequence sent
    sent: int = 0

    def fill(self, sock: zmq.Socket, room: int) -> None:
        """Send up to ``room`` more events, the oldest not sent yet first; unsendable ones are dropped."""
        for seq in self.spool.oldest(room, self.last) if room > 0 else []:
            msg_id = protocol.new_id()
            try:
                event = msgpack.unpackb(self.spool.read(seq), raw=False)
                frame = protocol.encode("event", event, msg_id)
                event_id = event["event_id"]
            except FileNotFoundError:
                LOG.error("glance-sync: spooled event %s of %s vanished; skipped", seq, self.spool.dir)
                self.spool.remove(seq)
                continue
            except (ValueError, TypeError, KeyError, msgpack.UnpackException, ProtocolError) as exc:
                LOG.error("glance-sync: dropping unsendable spooled event %s of %s: %s", seq, self.spool.dir, exc)
                self.spool.remove(seq)
                continue
            sock.send(frame, zmq.NOBLOCK)
            self.outstanding[msg_id] = (seq, event_id)
            self.by_event[event_id] = msg_id
            self.last = seq
            self.sent += 1

    def acked(self, event_id: str) -> bool:
        """The coordinator journaled ``event_id``: its file leaves the spool; False for an unknown id."""
        msg_id = self.by_event.pop(event_id, None)
        if msg_id is None:
            return False
        self.spool.forget(self.outstanding.pop(msg_id)[0])
        return True

    def refused(self, msg_id: str) -> str:
        """The coordinator will never take the event sent as ``msg_id``: dropped; returns its event id."""
        seq, event_id = self.outstanding.pop(msg_id)
        self.by_event.pop(event_id, None)
        self.spool.forget(seq)
        return event_id
