"""Worker processes that run tasks, so a stuck transfer never blocks the agent's control loop.

One process per task, at most ``workers`` at once, started with the ``spawn``
context: the agent holds a zmq context and paramiko threads, neither of which
survives a fork.  Workers report through one multiprocessing Queue that the loop
drains without blocking (``poll``).  A worker that dies without a result (killed,
crashed interpreter) is reported failed and retryable with its exit code; one that
runs past ``timeout`` (``scp_copy_timeout``) is terminated and reported the same
way.  Its slot is free again at once; ``poll`` never waits for a process to exit
(one slow to go is killed after ``TERMINATE_GRACE``, on a later poll).

Workers ignore SIGTERM and SIGINT: a stop signal sent to the agent's whole process
group (a terminal's Ctrl-C, a service manager) must not end the transfers the
stopping agent lets finish (``[agent] stop_grace``); the pool ends a worker with
SIGKILL.  Workers die with their agent: each asks the kernel for SIGKILL when its
parent exits (``PR_SET_PDEATHSIG``).  An orphan that outlived a ``kill -9`` of the agent
would otherwise keep appending to the ``.part`` file that the restarted agent's
next attempt resumes, and corrupt it.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import queue as queue_mod
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOG = logging.getLogger(__name__)

# Seconds a terminated worker gets to exit before it is killed.
TERMINATE_GRACE = 2.0
# What the agent's process group gets when it is stopped; workers leave them to the agent.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# prctl(2) option: the signal a process gets when its parent thread exits.
PR_SET_PDEATHSIG = 1


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
    """Runs ``target(task, settings, queue)`` in its own process for each task."""

    def __init__(
        self,
        workers: int,
        timeout: float,
        target: Callable[..., None],
        settings: Any,
        context: Any = None,
    ) -> None:
        self.workers = workers
        self.timeout = timeout
        self.target = target
        self.settings = settings
        self.ctx = context or multiprocessing.get_context("spawn")
        self.queue = self.ctx.Queue()
        self.running: dict[str, _Running] = {}
        # Workers that are done with their task but not yet gone: (process, since).
        self.exiting: list[tuple[Any, float]] = []

    def free_slots(self) -> int:
        return max(0, self.workers - len(self.running))

    def running_ids(self) -> list[str]:
        return list(self.running)

    def is_running(self, task_id: str) -> bool:
        return task_id in self.running

    def running_image(self, image_id: str) -> str | None:
        """The id of a running task for ``image_id``, if any."""
        return next((tid for tid, entry in self.running.items() if entry.task.get("image_id") == image_id), None)

    def start(self, task: dict[str, Any], now: float) -> None:
        """Start ``task`` in a new worker; the caller checks free_slots first."""
        if self.free_slots() <= 0:
            raise RuntimeError("no free worker slot")
        task_id = task["task_id"]
        process = self.ctx.Process(
            target=bound_to_parent, args=(os.getpid(), self.target, task, self.settings, self.queue),
            name=f"glance-sync-worker-{task_id}",
        )
        process.daemon = True
        # Blocked across the spawn (the mask is inherited through fork and exec) until the
        # worker ignores them: a stop signal to the process group during its start-up
        # would otherwise kill it before it could.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.running[task_id] = _Running(task=task, process=process, started=now)
        LOG.info("task %s (%s %s) started in worker pid %s", task_id, task.get("kind"), task.get("image_id"),
                 process.pid)

    def cancel(self, task_id: str, now: float) -> None:
        """Terminate the worker of ``task_id`` (if any) without a result; its slot is free at once."""
        entry = self.running.pop(task_id, None)
        if entry is None:
            return
        entry.process.kill()
        self.exiting.append((entry.process, now))  # reaped by a later poll

    def _drain(self, events: list[PoolEvent]) -> None:
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
                result = _failed(f"timed out after {self.timeout:g} s (scp_copy_timeout); worker terminated")
            else:
                continue
            del self.running[task_id]
            self.exiting.append((entry.process, now))
            events.append(PoolEvent("result", entry.task, result))
        self._reap(now)
        return events

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
        self.exiting.clear()
        self.queue.close()
        self.queue.cancel_join_thread()


def bound_to_parent(parent_pid: int, target: Callable[..., None], *args: Any) -> None:
    """Worker entry: die with the agent, then run ``target(*args)``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as exc:
        LOG.warning("worker %d will not die with its agent: %s", os.getpid(), exc)
    # Stop signals are the agent's to act on (see the module docstring); one that came
    # while they were blocked during the spawn is discarded here.
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    # The agent may have died between fork and prctl: the signal would never come.
    if os.getppid() != parent_pid:
        os._exit(1)
    target(*args)


def _failed(reason: str) -> dict[str, Any]:
    return {"outcome": "failed", "reason": reason, "retryable": True}
