"""The coordinator's poll loop: two ROUTER sockets, timers, and the journal behind them.

``initialize(now)`` binds the sockets, ``loop(now)`` runs one iteration and
``shutdown()`` closes everything; ``run()`` drives them with a steady wall clock
(times are stored in the journal and must survive a restart).  One iteration:

1. serve every frame that arrived: agents' session messages (dialog.py), ``event``,
   ``status_query`` and ``operator`` (operator.py) on the client socket (clientdesk.py),
   each only from a peer whose key's role may send it (admission.py, looked up per message); the
   client socket is the status thread's, which answers summaries itself (statusdesk.py) and passes
   the other frames here;
2. apply what the glance thread pool finished (registrations, image fetches), then the
   iteration's acks, dones and registrations that succeeded, one journal call per kind
   (taskreports.py), and journal the next slice of a finished reconciler pass's events;
3. mark silent agents offline, requeue the tasks whose lease is due (a heap in
   memory), persist the progress reports kept in memory;
4. submit the registrations due, plan journaled events that have no tasks yet
   (eventdesk.py; a bounded number of task rows per iteration, the rest in the next ones,
   which then come without waiting for frames), and cancel copies a delete waits behind (operator.py);
5. assign due tasks to agents with credits; commit steps 1-5 in one transaction (``Journal.batch``);
   publish the summary as committed to the status thread; only then go the replies that
   acknowledge them, and the tasks; if the commit fails, none;
6. send heartbeats, start a reconciler pass when one is due (reconcilepass.py), re-read the CURVE
   allow-list (changed, SIGHUP), publish the metrics snapshot (coordinator/metrics.py).

Step 4's queries and the hand-out run only when what they read can have changed (wakeups.py).
A ``status_query`` writes nothing and reads committed state, so it is answered at once (an
image view after a write of the same batch waits for the commit, and any reply waits behind
an earlier one of its connection: replies.py).

In a pair, the leader lease is renewed first; a lost one ends the loop (leadership.py).
Both ROUTER sockets are ROUTER_MANDATORY: a send to a peer that is gone fails instead of
vanishing (doc/control-plane.md, doc/sessions.md).  Every frame and step is wrapped: bad
input or a failing step is logged and the loop goes on.  No SQL or HTTP here.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import zmq
from oslo_config import cfg

from coordinator import wakeups
from coordinator.admission import AdmissionMixin
from coordinator.agents import Agents
from coordinator.clientdesk import ClientMixin
from coordinator.clock import SteadyClock
from coordinator.dialog import AgentDialog, peer_name
from coordinator.eventdesk import EventDesk
from coordinator.journal import Journal
from coordinator.leadership import Leadership
from coordinator.metrics import CoordinatorMetrics
from coordinator.operator import OperatorDesk
from coordinator.reconcilepass import ReconcilerPasses
from coordinator.regioncatalog import LiveRegions
from coordinator.registrar import FetchResult, GlanceResult, ReconcileResult, Registrar, TaskResult
from coordinator.replies import AfterCommit
from coordinator.sources import Sourcing
from coordinator.statuscache import SummaryCache
from coordinator.statusdesk import LoopEnd, StatusDesk, pipe_pair
from coordinator.tasks import RegistrationRetry, TaskDesk
from coordinator.wakeups import ChangeGate
from glancesync import protocol, roles, transport
from glancesync.exceptions import JournalError
from glancesync.liveness import retry_delay
from glancesync.storemap import StoreMap

LOG = logging.getLogger(__name__)
POLL_SECONDS = 0.1
# Progress reports are kept in memory and written at most this often (Journal.progress).
PROGRESS_FLUSH_SECONDS = 5.0
HELD_REFRESH_SECONDS = 5.0
# Seconds of frames and glance results one iteration takes on at most (a quarter of
# heartbeat_interval when that is less): the rest waits for the next iteration, so timers,
# heartbeats and status answers never wait behind a flood.
ITERATION_BUDGET = 0.5
# The GIL's hand-over interval while run() drives the loop (Python's default: 5 ms): the status
# thread waits at most about this long behind a busy iteration (doc/status.md).
SWITCH_INTERVAL = 0.001


class Service(AdmissionMixin, ClientMixin):
    """The coordinator service; ``context`` may be shared with tests."""

    def __init__(self, conf: cfg.ConfigOpts, storemap: StoreMap, journal: Journal, registrar: Registrar,
                 context: zmq.Context | None = None, metrics: CoordinatorMetrics | None = None,
                 regions: LiveRegions | None = None, leadership: Leadership | None = None) -> None:
        self.conf = conf
        self.leadership = leadership
        self.storemap = storemap
        # The regions synced now: what planner, reconciler, operators and status read.
        self.regions = regions if regions is not None else LiveRegions(storemap.regions)
        self.journal = journal
        self.registrar = registrar
        self.context = context or zmq.Context.instance()
        c = conf.coordinator
        self.agents = Agents(journal, c.heartbeat_interval, c.lease_timeout, self._retry_policy,
                             c.max_sessions_per_key, c.max_sessions_per_region)
        # Step 4's queries, and the hand-out's: run when what they read can have changed.
        self._queries = ChangeGate(lambda: journal.writes)
        self._handouts = ChangeGate(lambda: journal.writes)
        # A glance job that finished wakes the poll (wakeups.py), not its timeout.
        self.doorbell = wakeups.Doorbell()
        registrar.on_result = self.doorbell.ring
        self.tasks = TaskDesk(journal, self.agents, registrar, self._retry_policy, RegistrationRetry(
            c.registration_retry_backoff, c.max_registration_retry_backoff, c.registration_retry_horizon,
            wake=self._queries.wake_at), Sourcing(c.max_source_fanout, storemap.peers, chain=c.chain_sources))
        self.started_at = time.time()
        self.now = self.started_at
        self.agent_sock: zmq.Socket | None = None
        self.client_sock: LoopEnd | None = None  # the loop's end of the status thread's pipe
        self.status_desk: StatusDesk | None = None
        self.auth: roles.ClientAuth | None = None
        self._reload_keys = False
        self._keys_checked = 0.0
        self.poller = zmq.Poller()
        # An event fetched again later (backoff, an import, a snapshot) is planned when it is due.
        self.events = EventDesk(conf, storemap, journal, registrar, self.regions, wake_at=self._queries.wake_at)
        self.passes = ReconcilerPasses(conf, journal, registrar, self.regions, self.events.rules)
        # The operator's cancels reach agents only once the batch that journals them commits.
        self.operator = OperatorDesk(journal, self.agents, self.regions, self._ack_agent_later)
        self.metrics = metrics or CoordinatorMetrics()
        self.metrics.source = self
        # journal.writes when the iteration's batch opened: has the batch written since?
        self._writes_before = -1
        self.dialog = AgentDialog(conf, storemap, self.agents, self.tasks, send=self.send_agent,
                                  send_raw=lambda rid, payload: self._after_commit.send_behind(
                                      self.agent_sock, [rid], payload, self._send),
                                  ack_later=self._ack_agent_later, metrics=self.metrics,
                                  cancelled=self.operator.cancelled, credited=self._handouts.stir,
                                  admitted=lambda envelope, key, msg: self._admitted(
                                      self.agent_sock, envelope, key, msg))
        self._unapplied: list[GlanceResult] = []
        self.summary = SummaryCache(journal, self.agents)
        # Replies sent once the iteration's batch has committed, in the order each peer asked.
        self._after_commit = AfterCommit()
        self._client_handled = []
        self._taken_events = []
        self._progress_flushed = self._deadline = self._held_read = 0.0
        # Seconds of the longest iteration's work (not counting the poll's wait), and how many ran.
        self.longest_iteration = 0.0
        self.iterations = 0

    # -- lifecycle ------------------------------------------------------------------

    def initialize(self, now: float) -> None:
        c = self.conf.coordinator
        self.started_at = now
        self.auth = transport.start_server_auth(self.context, self.conf)
        self._keys_checked = now
        self.agent_sock = transport.bind_server(self.context, zmq.ROUTER, c.bind_host, c.agent_port, self.conf)
        router = transport.bind_server(self.context, zmq.ROUTER, c.bind_host, self.conf.sync_server_port, self.conf)
        # A send to a peer that is gone raises EHOSTUNREACH instead of vanishing silently.
        for sock in (self.agent_sock, router):
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        loop_end, thread_end = pipe_pair(self.context)
        self.client_sock = LoopEnd(loop_end)
        self.status_desk = StatusDesk(router, thread_end, self.auth is not None, self.may_ask_status)
        self.poller.register(self.agent_sock, zmq.POLLIN)
        self.poller.register(loop_end, zmq.POLLIN)
        self.poller.register(self.doorbell.fileno(), zmq.POLLIN)
        # Leases are wall-clock times in the journal: after a stop longer than lease_timeout
        # every one has lapsed, yet the agents kept working and will say hello again (with
        # their in_flight) within a few heartbeats. Give them one lease_timeout to do so.
        extended = self.journal.extend_leases(now + c.lease_timeout)
        if extended:
            LOG.info("%d handed-out task(s) get %.0f s for their agents to reconnect", extended, c.lease_timeout)
        self.tasks.sourcing.restore(self.journal.running_copies, now + c.lease_timeout)  # fanout kept (sources.py)
        # What a stopped loop deferred (a fetch again later, a retry's backoff) is due on time.
        for gate, due in zip((self._queries, self._handouts), self.journal.next_due(now), strict=True):
            if due is not None:
                gate.wake_at(due)
        for task in self.journal.registering():
            LOG.info("task %s of %s: redoing its registration", task.task_id, task.image_id)
            self.tasks.register(task)
        self.publish_summary()
        self.status_desk.start()  # from now on the client socket is the status thread's
        LOG.info("coordinator listening: agents on %s:%d, events and status on %s:%d",
                 c.bind_host, c.agent_port, c.bind_host, self.conf.sync_server_port)

    def shutdown(self) -> None:
        self.regions.shutdown()
        LOG.info("longest loop iteration: %.1f ms of work in %d iterations", self.longest_iteration * 1000,
                 self.iterations)
        try:
            self.journal.flush_progress()
        except JournalError as exc:
            LOG.warning("last progress reports not written: %s", exc)
        if self.leadership is not None:
            self.leadership.release()
        self.registrar.shutdown()
        self.doorbell.close()  # after the pool: no job is left to ring it
        if self.status_desk is not None:
            self.status_desk.stop()  # it closes the client socket
            if self.status_desk.alive:
                LOG.warning("the status thread did not end")
        for sock in (self.agent_sock, self.client_sock):
            if sock is not None:
                sock.close(linger=0)
        self.agent_sock = self.client_sock = self.status_desk = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None

    def run(self, stop: threading.Event) -> None:
        clock = SteadyClock()
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            self.initialize(clock.now())
            while not stop.is_set() and (self.leadership is None or self.leadership.held):
                self.loop(clock.now())
        finally:
            self.shutdown()

    # -- one iteration ---------------------------------------------------------------

    def loop(self, now: float, poll_seconds: float = POLL_SECONDS) -> None:
        self.now = now
        if self.leadership is not None and not self.leadership.hold(now):
            return  # the lease is lost: not one more act (run() stops)
        if self.events.waiting:
            self._queries.stir()  # answers past the planning budget: planned in this iteration
        if self.passes.journaling is not None or self._unapplied or self.events.waiting:
            poll_seconds = 0  # work is waiting (a pass's next slice, results, answers): only take what arrived
        poll_seconds = wakeups.poll_timeout(now, poll_seconds, self._queries, self._handouts)
        try:
            ready = dict(self.poller.poll(int(poll_seconds * 1000)))
        except zmq.ZMQError as exc:
            LOG.error("poll failed: %s", exc)
            ready = {}
        if self.doorbell.fileno() in ready:
            self.doorbell.clear()  # before the results are taken (_apply_results): a later one rings again
        started = time.monotonic()
        # Frames and glance results beyond this wait in their queues for the next iteration.
        self._deadline = started + min(ITERATION_BUDGET, self.conf.coordinator.heartbeat_interval / 4)
        try:
            # Every journal write of the frames and of the steps below: one transaction, one commit;
            # the copies reported done in it have their regional images read together (one listing per region).
            with self.registrar.gathering(), self.journal.batch():
                self._writes_before = self.journal.writes
                self.take_client_frames(now)  # what the status thread passed on (clientdesk.py)
                if self.agent_sock in ready:
                    self._drain(self.agent_sock, self.dialog.frame, now)
                self._steps(now, (self._keys, self._refresh_regions, self._apply_results, self.tasks.apply_reports,
                                  self.passes.journal_slice, self._housekeeping))
                if self._queries.due(now):
                    self._steps(now, (self.tasks.retry_registrations, self.events.plan_events, self.operator.step))
                self._steps(now, (self._dispatch,))  # assigned here, sent after the commit: one commit, not two
        except Exception as exc:
            # Nothing of this iteration is durable: acknowledge none of it; the peers send it again.
            LOG.error("the journal did not commit this iteration (%s); %d acknowledgement(s) withheld", exc,
                      self._after_commit.withhold())
            self.tasks.withdraw()
        self.publish_summary()  # committed (or withdrawn): what the status thread answers from now on
        for reply in self._after_commit.take():
            self._send(reply.sock, reply.envelope, reply.payload)
        self.client_frames_done()
        self._steps(now, (self.tasks.send_assigned, self.dialog.heartbeats, self.passes.reconcile, self.metrics.tick))
        self._timed(time.monotonic() - started)

    @staticmethod
    def _steps(now: float, steps: tuple[Any, ...]) -> None:
        for step in steps:
            try:
                step(now)
            except Exception:  # one failing step must not stop the others or the loop
                LOG.exception("coordinator step %s failed; continuing", step.__name__)

    def _timed(self, took: float) -> None:
        self.iterations += 1
        self.passes.note_iteration(took)
        if took > self.longest_iteration:
            self.longest_iteration = took
        if took > self.conf.coordinator.heartbeat_interval:
            # Agents take a coordinator silent for three heartbeat intervals for dead.
            LOG.warning("a loop iteration took %.1f s (heartbeat_interval %.1f s)", took,
                        self.conf.coordinator.heartbeat_interval)

    def _drain(self, sock: zmq.Socket, handler: Any, now: float) -> None:
        # A bounded batch per iteration, so a flood on one socket cannot starve the timers.
        for count in range(1000):
            if count and time.monotonic() > self._deadline:
                return
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                LOG.error("receive failed: %s", exc)
                return
            # Who sent it: the ZAP User-Id (the CURVE key) travels with each message.
            key = transport.peer_key(parts[-1]) if self.auth is not None else None
            frames = [part.bytes for part in parts]
            try:
                handler(frames, now, key)
            except Exception:
                LOG.exception("frame from %s could not be handled", peer_name(frames[0]))

    def _send(self, sock: zmq.Socket | None, envelope: list[bytes], payload: bytes) -> bool:
        """Hand one message to ``sock``; False (and one log line) when it cannot take it."""
        if sock is None:
            return False
        try:
            sock.send_multipart([*envelope, payload], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                LOG.info("peer %s is gone; message dropped", peer_name(envelope[0]))
                if sock is self.agent_sock:
                    self.dialog.unreachable(envelope[0])
            else:
                LOG.warning("cannot send to %s: %s", peer_name(envelope[0]), exc)
            return False
        return True

    # -- agent socket ------------------------------------------------------------------

    def send_agent(self, routing_id: bytes, msg_type: str, body: dict[str, Any]) -> bool:
        return self._send(self.agent_sock, [routing_id], protocol.encode(msg_type, body))

    def _ack_agent_later(self, routing_id: bytes, msg_type: str, body: dict[str, Any]) -> bool:
        self._after_commit.add(self.agent_sock, [routing_id], protocol.encode(msg_type, body))
        return True

    # -- timers and queues ------------------------------------------------------------------

    def _retry_policy(self, retryable: bool, now: float, backoff: bool = True) -> Any:
        c, retries_max = self.conf.coordinator, self.conf.task_retry_times

        def retry_at(retries: int) -> float | None:
            if not retryable or retries >= retries_max:
                return None
            when = now + retry_delay(retries + 1, c.retry_backoff, c.max_retry_backoff) if backoff else now
            self._handouts.wake_at(when)  # handed out when its backoff ends, not at the gate's next recheck
            return when

        return retry_at

    def _refresh_regions(self, now: float) -> None:
        urls, ready = self.regions.catalog_urls, self.regions.ready
        self.regions.refresh(now)
        if self.regions.catalog_urls is not urls or self.regions.ready != ready:  # a catalog read applied
            self._queries.stir()
            self._handouts.stir()

    def _apply_results(self, now: float) -> None:
        # A result taken from the pool exists nowhere else: when the journal cannot take it
        # (locked, disk full), keep it and the ones after it for the next iteration.
        pending, self._unapplied = self._unapplied + self.registrar.results(), []
        if pending:  # a fetch back or a registration done: planning and hand-outs may find more
            self._queries.stir()
            self._handouts.stir()
        for index, result in enumerate(pending):
            if index and time.monotonic() > self._deadline:
                self._unapplied = pending[index:]
                return
            try:
                if isinstance(result, TaskResult):
                    self.tasks.registered(result, now)
                elif isinstance(result, FetchResult):
                    self.events.fetched(result, now)
                elif isinstance(result, ReconcileResult):
                    self.passes.reconciled(result, now)
            except JournalError as exc:
                LOG.error("%d glance result(s) wait for the journal: %s", len(pending) - index, exc)
                self._unapplied = pending[index:]
                return
            except Exception:
                LOG.exception("glance result %r could not be applied; dropped", result)
                if isinstance(result, FetchResult):
                    self.events.fetching.discard(result.event_id)  # fetched again next time

    def _housekeeping(self, now: float) -> None:
        self.agents.expire(now)
        self.tasks.requeue_lapsed(now)
        if now - self._progress_flushed >= PROGRESS_FLUSH_SECONDS or now < self._progress_flushed:
            self._progress_flushed = now
            self.journal.flush_progress()
        if abs(now - self._held_read) >= HELD_REFRESH_SECONDS:
            # glance-sync-manage confirms held deletions from another process.
            self._held_read = now
            self.journal.reread_held_deletes()

    def _dispatch(self, now: float) -> None:
        if self._handouts.due(now):
            self.tasks.assign_due(self.agents.online(), now, self.send_agent)

    # -- planning ------------------------------------------------------------------------------
