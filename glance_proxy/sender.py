"""EventSender: hands image events from the request path to the coordinator, durably.

``submit()`` is all the request path ever calls: a non-blocking put on a bounded
in-memory queue (full: the event is dropped with an ERROR line, the request goes
on).  One daemon thread per process does the rest:

1. moves queued events into the on-disk outbox (``spool.Spool``, its own locked
   directory under ``spool_dir``);
2. sends the oldest spooled events (up to ``SEND_WINDOW``, in order) over a zmq
   DEALER to the coordinator and takes their ``event_ack``s; each file is deleted
   only once its event is acked; ``ack_timeout`` without any reply is silence;
3. on silence: closes the socket (stale replies die with it), opens a fresh one to
   the next coordinator of ``sync_servers`` (a pair: only the active one answers) at
   once, or after a jittered backoff once every one was tried, and replays from the
   oldest unacked file, so order holds; a silence longer than
   ``[proxy] outage_warning_after`` is logged (outage.AckWatch).

With ``[proxy] metrics_textfile`` set, the thread also rewrites the outbox's depth for
node_exporter's textfile collector every 15 s (spoolstats.py).

Spools left by dead workers (their lock is free) are adopted at start and every
``ADOPT_INTERVAL``, and sent before this worker's own events: they happened first.
``close()`` (also run at interpreter exit, which is how a gunicorn worker stops)
writes what is still queued in memory to the spool, within a bounded time.

The events of a window go out in the order they happened, over one connection, so
the coordinator receives them in that order; a replay after silence starts again
from the oldest unacked one.  Only after a transient refusal may a later event of
the window be journaled before an earlier one is sent again: events are hints,
planning reads glance's record and never applies an older one over a newer one.
An ``error`` reply (``ref``: the message id of the event it answers) means the
coordinator will never take that event (it is malformed for it) and the file is
dropped, except for the transient codes below, which are retried like silence.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from glance_proxy.outage import AckWatch
from glance_proxy.spool import SharedUsage, Spool, SpoolFull
from glance_proxy.spoolstats import TextfileWriter
from glance_proxy.window import Window
from glancesync import protocol, transport
from glancesync.exceptions import GlanceSyncError, ProtocolError
from glancesync.liveness import Backoff

LOG = logging.getLogger(__name__)

# How long one event waits for its ack before the socket is replaced: the
# coordinator acks after one journal commit, milliseconds on a healthy host.
ACK_TIMEOUT = 2.0
# Error codes a coordinator answers when it cannot take an event *now* (journal
# unavailable, not the leader, shutting down): retried, never dropped.  "version":
# this sender and the coordinator speak different protocol versions, which lasts only
# until the other side is upgraded (doc/upgrade.md); the spooled event is re-encoded
# on each send, so it goes out in the new version once this host is upgraded.
TRANSIENT_ERROR_CODES = frozenset({"busy", "unavailable", "journal", "internal", "not_leader", "retry", "version"})
# Events in flight at once: the coordinator acks every event of a loop iteration after
# that iteration's one journal commit, so a window lets one commit ack many events
# instead of one (stop-and-wait was bounded by one commit per event).
SEND_WINDOW = 64
# Events one sending round sends at most, before the sender thread spools what the
# request path queued meanwhile (its in-memory queue is bounded).
ROUND_EVENTS = 1024
# Longest wait on the in-memory queue, so close() is noticed promptly.
_IDLE_WAIT = 0.5
# How often a running sender looks for spools of workers that died since: a
# listing of spool_dir's top level (a few entries), not of any spool.
ADOPT_INTERVAL = 30.0
# What close() may take: gunicorn kills a worker that is not gone within its
# graceful_timeout (30 s by default), and the interpreter exit must not hang.
CLOSE_TIMEOUT = 5.0


class EventSender:
    """The outbox of one process; ``conf`` is a ConfigOpts with the filter options registered."""

    def __init__(
        self,
        conf: Any,
        *,
        context: zmq.Context | None = None,
        ack_timeout: float = ACK_TIMEOUT,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conf = conf
        self.coordinators = transport.Failover(
            transport.addresses(conf.sync_servers, conf.sync_server_host, conf.sync_server_port))
        self.ack_timeout = ack_timeout
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self.clock = clock
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=conf.proxy.queue_size)
        self.usage = SharedUsage(conf.proxy.spool_dir, conf.proxy.spool_max_bytes)
        try:
            self.spool = Spool.create(self.usage.root, self.usage)
        except BaseException:
            self.usage.close()
            raise
        self.adopted: list[Spool] = []
        path = conf.proxy.metrics_textfile
        self.textfile = TextfileWriter(path, conf.proxy.spool_dir) if path else None
        self.dropped_full = 0
        where = ", ".join(f"{host}:{port}" for host, port in self.coordinators.targets)
        self.watch = AckWatch(conf.proxy.outage_warning_after, where, self.backlog)
        self._pid = os.getpid()
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket | None = None
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._adopt_at = 0.0
        self._flush_until = float("inf")
        # Events sent before waiting for replies: SEND_WINDOW, or 1 after a refusal that named none.
        self._window = SEND_WINDOW
        self._thread = threading.Thread(target=self._run, name="glance-sync-sender", daemon=True)

    # ---- the request path -------------------------------------------------
    def start(self) -> EventSender:
        """Start the sending thread (once); it first recounts the shared usage and adopts orphans."""
        with self._lock:
            if self._thread.is_alive() or self._closed:
                return self
            self._thread.start()
            # How a gunicorn worker ends (SIGTERM, SIGQUIT, max_requests): SystemExit, then atexit.
            atexit.register(self.close)
        return self

    def submit(self, event: dict[str, Any]) -> bool:
        """Queue one event without ever blocking; False when it was dropped."""
        try:
            self.queue.put_nowait(event)
            return True
        except queue.Full:
            LOG.error(
                "glance-sync: event queue full (%d), dropped %s event of image %s",
                self.queue.maxsize, event.get("kind"), event.get("image_id"),
            )  # fmt: skip
            return False

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the thread and spool what is still queued, within ``timeout`` (idempotent).

        What is spooled stays on disk: this worker's directory is released and the
        next sender that looks adopts it.  A no-op in a process forked from the owner.
        """
        with self._lock:
            if self._closed or os.getpid() != self._pid:
                return
            self._closed = True
        atexit.unregister(self.close)
        self._flush_until = self.clock() + timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            # Its socket and spools are still in use: leave them (and the context, whose
            # term() would wait for that socket) to the process's end.
            LOG.error("glance-sync: sender thread did not stop within %g s; %d queued event(s) may be lost",
                      timeout, self.queue.qsize())
            return
        self._spool_queued(wait=0)  # never started, or stopped: nothing else drains the queue now
        for spool in (*self.adopted, self.spool):
            spool.close()
        self.usage.close()
        self._drop_socket()
        if self._own_context:
            self._context.term()

    def backlog(self) -> int:
        """Events in this sender's outbox: its own spool and the adopted ones."""
        return len(self.spool) + sum(len(s) for s in self.adopted)

    # ---- orphans ------------------------------------------------------------
    def adopt_orphans(self) -> int:
        """Take every spool under spool_dir whose lock is free; returns how many events they hold."""
        held = {self.spool.dir, *(s.dir for s in self.adopted)}
        found = 0
        for path in sorted(self.usage.root.iterdir()):
            if path.name.startswith(".") or path in held or not path.is_dir():
                continue
            spool = Spool.adopt(path, self.usage)
            if spool is None:
                continue  # a live worker's, or another worker adopted it first
            if len(spool):
                LOG.info("glance-sync: adopted %d spooled event(s) of a stopped worker from %s", len(spool), path)
                self.adopted.append(spool)
                found += len(spool)
            else:
                spool.close()
        return found

    def _look_for_orphans(self, recount: bool = False) -> None:
        try:
            if recount:  # a worker that crashed may have left the shared count off by its last event
                self.usage.recount()
            self.adopt_orphans()
        except OSError as exc:
            LOG.error("glance-sync: cannot adopt orphaned spools under %s: %s", self.usage.root, exc)
        self._adopt_at = self.clock() + ADOPT_INTERVAL

    def _sending_spool(self) -> Spool | None:
        """The spool whose oldest event goes next: adopted ones first, emptied ones removed."""
        while self.adopted:
            if len(self.adopted[0]):
                return self.adopted[0]
            self.adopted.pop(0).close()
        return self.spool if len(self.spool) else None

    # ---- the sending thread -----------------------------------------------
    def _run(self) -> None:
        # Here, not in start(): start() runs on a request's path, and a big orphan takes a while to read.
        self._look_for_orphans(recount=True)
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # never let the thread die: log and go on
                LOG.exception("glance-sync: sender loop error")
                self._stop.wait(1.0)
        self._spool_queued(wait=0)

    def step(self) -> None:
        """One round: adopt when due, spool what is queued, then send the oldest event if it is time."""
        now = self.clock()
        if now >= self._adopt_at:
            self._look_for_orphans()
        if self.textfile is not None:
            self.textfile.maybe_write(now, time.time())
        spool = self._sending_spool()
        wait = _IDLE_WAIT if spool is None else max(0.0, min(_IDLE_WAIT, self._retry_at - now))
        self._spool_queued(wait=wait)
        spool = self._sending_spool()
        if spool is not None and self.clock() >= self._retry_at:
            self._send_window(spool)
        self.watch.check(self.clock())

    def _spool_queued(self, wait: float) -> None:
        try:
            event = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
        except queue.Empty:
            return
        while True:
            self._spool_event(event)
            if self._stop.is_set() and self.clock() > self._flush_until:
                LOG.error("glance-sync: stopping; %d queued event(s) not written to the outbox in time, lost",
                          self.queue.qsize())
                return
            try:
                event = self.queue.get_nowait()
            except queue.Empty:
                return

    def _spool_event(self, event: dict[str, Any]) -> None:
        try:
            data = msgpack.packb(event, use_bin_type=True)
            self.spool.put(data)
        except SpoolFull:
            self.dropped_full += 1
            LOG.error(
                "glance-sync: event outbox %s is full (limit spool_max_bytes=%d bytes, all workers together): "
                "dropped %s event of image %s (%d dropped by this worker); the coordinator's reconciler "
                "will repair it",
                self.usage.root, self.usage.max_bytes, event.get("kind"), event.get("image_id"), self.dropped_full,
            )  # fmt: skip
        except (OSError, TypeError, ValueError) as exc:
            LOG.error("glance-sync: cannot spool %s event of image %s: %s", event.get("kind"), event.get("image_id"), exc)

    def _socket_now(self) -> zmq.Socket:
        if self._socket is None:
            host, port = self.coordinators.current
            self._socket = transport.connect_client(self._context, zmq.DEALER, host, port, self.conf)
        return self._socket

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _send_window(self, spool: Spool) -> None:
        """Send the oldest events in order, keeping up to ``SEND_WINDOW`` of them unacked, and take their replies.

        Each acked event leaves the outbox's index at once (its file when the round ends,
        so that the unlinks do not wait behind the coordinator's fsyncs on a shared
        disk); once half the window is acked the
        next events go out together, so the coordinator has several waiting when its
        commit ends.  A round sends at
        most ``ROUND_EVENTS`` (then the queue from the request path is spooled).  On
        silence or a transient error the socket is replaced (late replies die with
        it) and, after a backoff, whatever is unacked is sent again, oldest first;
        the coordinator recognises resends.
        """
        sent_at = self.clock()
        window = Window(spool)
        try:
            sock = self._socket_now()
            self._top_up(sock, window)
            outcome = self._await_replies(sock, window) if window.outstanding else "done"
        except (zmq.ZMQError, GlanceSyncError) as exc:
            LOG.warning("glance-sync: cannot reach coordinator at %s: %s", self.coordinators, exc)
            outcome = "retry"
        finally:
            spool.purge()  # the files of the events answered, now that none is in flight
        if outcome == "done":
            if window.sent:
                self._window = SEND_WINDOW
                self.backoff.reset()
                self.watch.acked(self.clock())
            return
        self.watch.unacked(sent_at, self.clock())
        self._drop_socket()
        # The next coordinator of a pair at once; a backoff once each of them was tried.
        delay = self.backoff.next_delay() if self.coordinators.advance() else 0.0
        self._retry_at = self.clock() + delay
        LOG.debug("glance-sync: %d event(s) not acked, retry at %s in %.1fs", len(window.outstanding),
                  self.coordinators, delay)

    def _top_up(self, sock: zmq.Socket, window: Window) -> None:
        window.fill(sock, min(self._window - len(window.outstanding), ROUND_EVENTS - window.sent))

    def _await_replies(self, sock: zmq.Socket, window: Window) -> str:
        """'done' once every event sent is acked or refused for good, 'retry' on silence or a transient error.

        Silence is ``ack_timeout`` without any reply: the coordinator acks a window over
        one or a few loop iterations, each reply shows it is making progress.
        """
        outstanding = window.outstanding
        deadline = self.clock() + self.ack_timeout
        while outstanding and not self._stop.is_set():
            left = deadline - self.clock()
            if left <= 0 or not sock.poll(int(min(left, _IDLE_WAIT) * 1000) + 1):
                if left <= 0:
                    return "retry"
                continue
            try:
                msg = protocol.decode(sock.recv(zmq.NOBLOCK))
            except ProtocolError as exc:
                LOG.warning("glance-sync: bad reply from coordinator: %s", exc)
                continue
            deadline = self.clock() + self.ack_timeout
            if msg.type == "event_ack" and window.acked(msg.body["event_id"]):
                self.watch.acked(self.clock())  # a silence is over at its first ack
                if len(outstanding) <= self._window // 2:  # in bursts: one commit takes many
                    self._top_up(sock, window)
            elif msg.type == "error":
                if not self._refused(msg, window):
                    return "retry"
                self._top_up(sock, window)
        return "done" if not outstanding else "retry"

    def _refused(self, msg: protocol.Message, window: Window) -> bool:
        """An ``error`` reply: the event it names is dropped when refused for good (True); False: retry."""
        code, reason, ref = msg.body["code"], msg.body["reason"], msg.body.get("ref")
        if code in TRANSIENT_ERROR_CODES:
            LOG.warning("glance-sync: coordinator cannot take events now: %s %s", code, reason)
            return False
        if ref not in window.outstanding:
            if len(window.outstanding) > 1:
                # Which event it refuses is unknown: send again one at a time, where a reply
                # can only be about the one event in flight.
                LOG.warning("glance-sync: coordinator refused an event (%s: %s); resending one at a time",
                            code, reason)
                self._window = 1
                return False
            ref = next(iter(window.outstanding))
        LOG.error("glance-sync: coordinator refused event %s for good (%s: %s); dropped", window.outstanding[ref][1],
                  code, reason)
        window.refused(ref)  # after the log line: whoever sees the outbox empty finds it logged
        return True
