"""The status thread: owns the client socket, answers summaries itself, passes the rest to the loop.

The loop's iteration can take hundreds of milliseconds (500 agents saying hello, a large
commit); a summary query that waited behind it would take as long.  So a small thread
owns the client ROUTER socket (``sync_server_port``; a zmq socket is used by one thread
only) and:

- answers a ``status_query`` for the summary from the last snapshot the loop published
  (``publish``: the packed ``data``, swapped whole after each commit, so an answer never
  shows what is not committed), when its sender may send one and the connection has no
  frame at the loop still waiting for its reply;
- passes every other frame to the loop over an inproc PAIR socket, as
  ``[key, routing id..., payload]`` (``key``: the sender's CURVE key, empty without one),
  and later frames of that connection too, so a connection gets its replies in the order
  it sent the requests (an ``event_ack`` before the summary asked after it: replies.py);
- sends the loop's replies (``[REPLY, routing id..., payload]`` on the pipe) and learns
  which frames the loop has finished with (``[DONE, routing id...]``, one id per frame,
  after the iteration's replies left).

Nothing here reads the journal or the loop's objects: only the snapshot, the allow-list
(``ClientAuth.peer``) and the protocol.  A frame that cannot be handled is logged once and
the thread goes on; ``stop()`` ends it and closes the socket.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from coordinator.dialog import peer_name
from glancesync import protocol, transport
from glancesync.exceptions import ProtocolError

LOG = logging.getLogger(__name__)
REPLY, DONE = b"R", b"D"
# How often (ms) the thread looks at its stop flag while nothing arrives.
STOP_POLL_MS = 100
# Frames taken from one socket before the thread looks at the other one.
BURST = 100
# Seconds the thread pauses after an unexpected failure, so that a lasting one is not a busy loop.
ERROR_PAUSE = 0.1

_pipes = itertools.count(1)


def pipe_pair(context: zmq.Context) -> tuple[zmq.Socket, zmq.Socket]:
    """Two connected inproc PAIR sockets (the loop's end, the thread's end), unbounded both ways."""
    address = f"inproc://glance-sync-status-{id(context)}-{next(_pipes)}"
    ends = []
    for _ in range(2):
        sock = context.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # a reply the loop hands over is never dropped for a full queue
        sock.setsockopt(zmq.RCVHWM, 0)
        ends.append(sock)
    ends[1].bind(address)
    ends[0].connect(address)
    return ends[0], ends[1]


class LoopEnd:
    """The loop's end of the pipe: replies as the client socket would take them, frames, and DONE."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock

    def send_multipart(self, parts: list[bytes], flags: int = 0) -> None:
        self.sock.send_multipart([REPLY, *parts], flags)

    def done(self, routing_ids: list[bytes]) -> None:
        """The loop has finished with one frame of each of ``routing_ids`` (their replies went first)."""
        if routing_ids:
            self.sock.send_multipart([DONE, *routing_ids])

    def recv(self) -> tuple[list[bytes], str | None] | None:
        """One frame from the thread (routing id..., payload) and its sender's key; None when none waits."""
        try:
            parts = self.sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        return parts[1:], parts[0].decode("ascii", "replace") or None

    def close(self, linger: int = 0) -> None:
        self.sock.close(linger=linger)


class StatusDesk:
    """The thread that owns the client socket; ``admits(key)`` says whether a key may ask the status."""

    def __init__(self, router: zmq.Socket, pipe: zmq.Socket, keyed: bool,
                 admits: Callable[[str | None], bool]) -> None:
        self.router, self.pipe, self.keyed, self.admits = router, pipe, keyed, admits
        # The summary's packed ``data`` as of the last commit (None until the loop publishes one).
        self.snapshot: bytes | None = None
        # Frames passed to the loop whose replies have not all left, per connection.
        self.at_loop: Counter[bytes] = Counter()
        self.answered = 0  # summaries answered here: what the tests look at
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def publish(self, data: bytes) -> None:
        """The loop's committed summary ``data``, packed; later answers show it (one reference swap)."""
        self.snapshot = data

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (it closes the client socket); returns once it ended or ``timeout`` passed."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pipe, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    ready = dict(poller.poll(STOP_POLL_MS))
                    # The loop's replies first: they may free connections whose frames wait at the loop.
                    if self.pipe in ready:
                        self._from_loop()
                    if self.router in ready:
                        self._from_clients()
                except zmq.ContextTerminated:
                    return  # the process is ending
                except Exception:  # one log line and on: a dead thread would leave every client unanswered
                    LOG.exception("status thread: failed; going on")
                    self._stop.wait(ERROR_PAUSE)
        finally:
            self.router.close(linger=0)
            self.pipe.close(linger=0)

    def _from_loop(self) -> None:
        for _ in range(BURST):
            try:
                parts = self.pipe.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if parts[0] == REPLY:
                self.send(parts[1:-1], parts[-1])
            elif parts[0] == DONE:
                for rid in parts[1:]:
                    self.at_loop[rid] -= 1
                    if self.at_loop[rid] <= 0:
                        del self.at_loop[rid]

    def _from_clients(self) -> None:
        for _ in range(BURST):
            try:
                parts = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                LOG.error("status thread: receive failed: %s", exc)
                return
            frames = [part.bytes for part in parts]
            try:
                # Who sent it: the ZAP User-Id (the CURVE key) travels with each message.
                key = transport.peer_key(parts[-1]) if self.keyed else None
                self.frame(frames, key)
            except Exception:
                LOG.exception("status thread: frame from %s could not be handled", peer_name(frames[0]))

    def frame(self, frames: list[bytes], key: str | None) -> None:
        """Answer ``frames`` here if it is a summary query that may be answered now, else pass it on."""
        rid = frames[0]
        if len(frames) > 1 and not self.at_loop[rid] and self.snapshot is not None:
            msg = summary_query(frames[-1])
            if msg is not None and self.admits(key):
                reply = protocol.encode_prepacked("status_reply", {"view": "summary"}, {"data": self.snapshot})
                self.send(frames[:-1], reply)
                self.answered += 1
                return
        self.at_loop[rid] += 1
        self.pipe.send_multipart([(key or "").encode("ascii"), *frames])

    def send(self, envelope: list[bytes], payload: bytes) -> bool:
        try:
            self.router.send_multipart([*envelope, payload], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                LOG.info("peer %s is gone; message dropped", peer_name(envelope[0]))
            else:
                LOG.warning("cannot send to %s: %s", peer_name(envelope[0]), exc)
            return False
        return True


def summary_query(payload: bytes) -> Any:
    """The message if ``payload`` is a well-formed summary ``status_query``; None otherwise."""
    try:
        msg = protocol.decode(payload)
    except ProtocolError:
        return None  # the loop answers it with an error, in its turn
    return msg if msg.type == "status_query" and msg.body["view"] == "summary" else None
