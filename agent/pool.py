"""Runs tasks off the agent's control loop, so a stuck transfer never blocks it.

At most ``workers`` tasks at once, of which at most ``max_copies`` copies
(``[agent] max_concurrent_copies``): a copy beyond that waits here, holding its
slot, and starts when a running copy ends (first come, first started).  A task
runs in a worker process (a copy, or every kind under ``worker_mode = spawn``)
or in an agent thread (update and delete under ``worker_mode = pool``);
agent/runners.py says how each is started and why workers die with the agent
and ignore stop signals.  Processes report through one
multiprocessing Queue, threads through a plain queue; the loop drains both without
blocking (``poll``).  A worker that dies without a result (killed, crashed
interpreter) is reported failed and retryable with its exit code, once; one that
runs past ``timeout`` (``scp_copy_timeout``) is killed (a thread: cancelled) and
reported the same way.  Its slot is free again at once; ``poll`` never waits for a
process to exit (one slow to go is killed again after ``TERMINATE_GRACE``, on a
later poll).  A cancelled task reports nothing.

A worker that outlived a ``kill -9`` of the agent would keep appending to the
``.part`` file that the restarted agent's next attempt resumes, and corrupt it:
hence the parent-death signal, and the ``.part`` lock (agent/partlock.py) that
every copy and delete holds, in a process or a thread alike.  A task cancelled for good (``discard``) also
loses its partial file, once its worker is gone (agent/discard.py).
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import runners
from agent.discard import Discards

LOG = logging.getLogger(__name__)

# Seconds a terminated worker gets to exit before it is killed.
TERMINATE_GRACE = 2.0


@dataclass(frozen=True)
class PoolEvent:
    """Something a worker reported: ``kind`` is "progress" or "result"."""

    kind: str
    task: dict[str, Any]
    body: dict[str, Any]


@dataclass
class _Running:
    task: dict[str, Any]
    process: Any
    started: float
    result: dict[str, Any] | None = field(default=None)


class Pool:
    """Runs ``target(task, settings, queue)`` in a worker process for each task, or
    ``inline(task, settings, cancelled)`` in a thread for a task of ``inline_kinds``."""

    def __init__(
        self,
        workers: int,
        timeout: float,
        target: Callable[..., None],
        settings: Any,
        context: Any = None,
        work_dir: str | None = None,
        inline: Callable[..., dict[str, Any]] | None = None,
        inline_kinds: frozenset[str] = frozenset(),
        max_copies: int = 0,
    ) -> None:
        self.workers = workers
        # Copies running at once; 0: as many as workers.
        self.max_copies = min(max_copies, workers) if max_copies > 0 else workers
        self.timeout = timeout
        self.target = target
        self.settings = settings
        self.ctx = context or runners.context("spawn")
        self.inline = inline
        self.inline_kinds = inline_kinds if inline is not None else frozenset()
        self.queue = self.ctx.Queue()
        self.inline_results: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self.running: dict[str, _Running] = {}
        # Copies accepted but held back by max_copies, in arrival order (task id -> task).
        self.waiting: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Workers that are done with their task but not yet gone: (process, since).
        self.exiting: list[tuple[Any, float]] = []
        # Partial files of tasks cancelled for good, removed once their worker let go.
        self.discards = Discards(work_dir)

    def free_slots(self) -> int:
        return max(0, self.workers - len(self.running) - len(self.waiting))

    def running_ids(self) -> list[str]:
        """Tasks this pool answers for: running, then waiting for a copy slot."""
        return [*self.running, *self.waiting]

    def is_running(self, task_id: str) -> bool:
        return task_id in self.running or task_id in self.waiting

    def running_image(self, image_id: str) -> str | None:
        """The id of a running (or waiting) task for ``image_id``, if any."""
        tasks = [(tid, entry.task) for tid, entry in self.running.items()] + list(self.waiting.items())
        return next((tid for tid, task in tasks if task.get("image_id") == image_id), None)

    def copies_running(self) -> int:
        return sum(1 for entry in self.running.values() if entry.task.get("kind") == "copy")

    def start(self, task: dict[str, Any], now: float) -> None:
        """Start ``task`` in a new worker or thread, or hold a copy over max_copies back; the caller checks
        free_slots first."""
        if self.free_slots() <= 0:
            raise RuntimeError("no free worker slot")
        if task.get("kind") == "copy" and self.copies_running() >= self.max_copies:
            self.waiting[task["task_id"]] = task
            LOG.info("task %s (copy %s) waits: %d copies already run (max_concurrent_copies)", task["task_id"],
                     task.get("image_id"), self.max_copies)
            return
        self._launch(task, now)

    def _launch(self, task: dict[str, Any], now: float) -> None:
        task_id = task["task_id"]
        self.discards.forget(str(task.get("image_id")))  # its .part is this attempt's again
        if task.get("kind") in self.inline_kinds:
            runner: Any = runners.TaskThread(self.inline, task, self.settings,
                                             lambda tid, result: self.inline_results.put((tid, result)))
            runner.start()
            where = "an agent thread"
        else:
            runner = self.ctx.Process(
                target=runners.bound_to_parent, args=(os.getpid(), self.target, task, self.settings, self.queue),
                name=f"glance-sync-worker-{task_id}",
            )
            runner.daemon = True
            runners.start_process(self.ctx, runner)
            where = f"worker pid {runner.pid}"
        self.running[task_id] = _Running(task=task, process=runner, started=now)
        LOG.info("task %s (%s %s) started in %s", task_id, task.get("kind"), task.get("image_id"), where)

    def cancel(self, task_id: str, now: float, discard: bool = False) -> None:
        """Terminate the worker of ``task_id`` (if any) without a result; its slot is free at once.

        ``discard``: the copy is over for good, its ``.part`` is removed once the worker is gone.
        """
        waiting = self.waiting.pop(task_id, None)
        entry = self.running.pop(task_id, None)
        if entry is not None:
            entry.process.kill()
            self.exiting.append((entry.process, now))  # reaped by a later poll
        task = entry.task if entry is not None else waiting
        if discard and task is not None and task.get("image_id"):
            # A copy that never started may still find the .part an earlier attempt left.
            self.discards.add(str(task["image_id"]), now)

    def _drain(self, events: list[PoolEvent]) -> None:
        while True:
            try:
                task_id, result = self.inline_results.get_nowait()
            except queue_mod.Empty:
                break
            if task_id in self.running:
                self.running[task_id].result = result
        while True:
            try:
                item = self.queue.get_nowait()
            except queue_mod.Empty:
                return
            except (OSError, EOFError, ValueError) as exc:  # a worker killed mid-put leaves a torn message
                LOG.warning("dropped an unreadable worker message: %s", exc)
                return
            kind, task_id = item[0], item[1]
            entry = self.running.get(task_id)
            if entry is None:
                continue
            if kind == "progress":
                body = {"bytes_done": item[2], "bytes_total": item[3]}
                if len(item) > 4 and item[4]:
                    body["phase"] = item[4]  # fetching, uploading, registering (agent/pipeline.py)
                events.append(PoolEvent("progress", entry.task, body))
            elif kind == "result":
                entry.result = item[2]

    def poll(self, now: float) -> list[PoolEvent]:
        """Collect progress and results; reap finished, dead and overdue workers. Never blocks long."""
        events: list[PoolEvent] = []
        self._drain(events)
        for task_id, entry in list(self.running.items()):
            if entry.result is None and not entry.process.is_alive():
                # Its last put may have reached the pipe just before it exited.
                self._drain(events)
            if entry.result is not None:
                result = entry.result
            elif not entry.process.is_alive():
                entry.process.join(0)
                code = entry.process.exitcode
                result = _failed(f"worker process exited with code {code} before reporting a result")
            elif now - entry.started > self.timeout:
                entry.process.kill()
                what = "worker terminated" if entry.process.pid else "its thread cancelled"
                result = _failed(f"timed out after {self.timeout:g} s (scp_copy_timeout); {what}")
            else:
                continue
            del self.running[task_id]
            self.exiting.append((entry.process, now))
            events.append(PoolEvent("result", entry.task, result))
        self._start_waiting(now, events)
        self._reap(now)
        self.discards.sweep(now)
        return events

    def _start_waiting(self, now: float, events: list[PoolEvent]) -> None:
        """Start held-back copies while copy slots are free; one that cannot start is reported failed."""
        while self.waiting and self.copies_running() < self.max_copies:
            task_id, task = self.waiting.popitem(last=False)
            try:
                self._launch(task, now)
            except OSError as exc:  # no process could be started (fd or memory exhaustion)
                events.append(PoolEvent("result", task, _failed(f"cannot start a worker: {exc}")))

    def _reap(self, now: float) -> None:
        # Never wait here: a worker slow to exit on a busy machine would stall the
        # agent's loop past its heartbeats, and the coordinator would take it for dead.
        still = []
        for process, since in self.exiting:
            if not process.is_alive():
                process.join(0)
                continue
            if now - since > TERMINATE_GRACE:
                process.kill()
            still.append((process, since))
        self.exiting = still

    def _stop(self, process: Any) -> None:
        process.kill()
        process.join(TERMINATE_GRACE)

    def shutdown(self) -> None:
        """Terminate every worker; their tasks go back to the coordinator by lease expiry."""
        for process in [entry.process for entry in self.running.values()] + [p for p, _ in self.exiting]:
            self._stop(process)
        self.running.clear()
        self.waiting.clear()
        self.exiting.clear()
        self.queue.close()
        self.queue.cancel_join_thread()


def _failed(reason: str) -> dict[str, Any]:
    return {"outcome": "failed", "reason": reason, "retryable": True}
