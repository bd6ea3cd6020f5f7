"""Where a task's attempt runs: a worker process forked from a pre-imported server, or an agent thread.

``[agent] worker_mode = pool`` (the default) starts a copy in a process that
multiprocessing's ``forkserver`` forks for it.  The fork server is started once
(spawned: it holds none of the agent's zmq or paramiko state), imports the task
modules once (``PRELOAD``), and never runs a task itself, so each copy starts
in a few milliseconds instead of 1.2 CPU-s of imports, in a process that no
earlier task has touched: open files, environment, working directory, threads
and module state cannot leak from one task into the next.  Update and delete
tasks, a few glance calls each, run in a thread of the agent (``TaskThread``).
``worker_mode = spawn`` is the former way, kept as a baseline: a freshly spawned
interpreter for every task of every kind.

Lifetime guarantees, whatever the mode:

- Worker processes die with the agent.  A spawned worker asks the kernel for
  SIGKILL when the agent exits (``PR_SET_PDEATHSIG``); under the fork server,
  the server asks it for itself and each worker asks it when the server goes, so
  a ``kill -9`` of the agent takes the server and then every worker with it.
  The kernel ties that signal to the thread that forked, so processes are started
  from the agent's main thread (its loop), never from a task thread.
- Stop signals (SIGTERM, SIGINT) sent to the agent's process group are the
  agent's to act on: the server and the workers ignore them (blocked from before
  their start until they do), and the pool ends a worker with SIGKILL.
- A thread cannot be killed: cancelling it sets its event, and every HTTP request
  of its glance session checks the event first (``cancellable``), so a cancelled
  update or delete makes no further call; one already on the wire ends within the
  endpoint's ``timeout``.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable
from typing import Any

from glancesync.exceptions import GlanceSyncError

LOG = logging.getLogger(__name__)

# What the agent's process group gets when it is stopped; workers leave them to the agent.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# prctl(2) option: the signal a process gets when its parent thread exits.
PR_SET_PDEATHSIG = 1
# Imported once by the fork server: this module first (it arms the server), then
# everything a task needs.  Anything imported later is paid again by every worker.
PRELOAD = ("agent.runners", "agent.task", "agent.sftp_openssh", "keystoneauth1.loading", "glanceclient.v2.client")
MODES = ("pool", "spawn")

# In the fork server and the workers it forks: the server's pid (their parent).
server_pid: int | None = None


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent exits; exits at once if ``parent_pid`` is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as exc:
        LOG.warning("worker %d will not die with its agent: %s", os.getpid(), exc)
    # Stop signals are the agent's (see the module docstring); one that came while
    # they were blocked during the start is discarded here.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # The parent may have died between fork and prctl: the signal would never come.
    if os.getppid() != parent_pid:
        os._exit(1)


def bound_to_parent(parent_pid: int, target: Callable[..., None], *args: Any) -> None:
    """Worker entry: die with the agent (or with the fork server), then run ``target(*args)``."""
    die_with_parent(server_pid or parent_pid)
    target(*args)


def _imported_by_fork_server() -> bool:
    """True while multiprocessing's fork server imports its preload modules (this module first)."""
    return any(frame.name == "main" and frame.filename.endswith(os.path.join("multiprocessing", "forkserver.py"))
               for frame in traceback.extract_stack())


def _arm_server() -> None:
    """In the fork server, at its preload: die with the agent, ignore stop signals.

    The server's parent is the agent that spawned it.  Had the agent died before this
    line, the server still exits: multiprocessing ends it when its pipe to the agent
    closes, and no worker can have been asked for meanwhile.
    """
    global server_pid
    die_with_parent(os.getppid())
    server_pid = os.getpid()


def context(mode: str) -> Any:
    """The multiprocessing context of ``mode`` ("pool": forkserver with PRELOAD; "spawn")."""
    if mode == "spawn":
        return multiprocessing.get_context("spawn")
    if mode != "pool":
        raise ValueError(f"unknown worker mode {mode!r}")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def start_process(ctx: Any, process: Any) -> None:
    """``process.start()`` with stop signals blocked (inherited through fork and exec until the child ignores them).

    Under the fork server, the start (re)starts the server first when it is not
    running, with the same mask: its start-up is protected like a worker's.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def prestart(ctx: Any, timeout: float = 120.0) -> None:
    """Start the fork server of ``ctx`` now and wait until it has imported PRELOAD.

    Otherwise the first copy would wait for it: ``Process.start`` blocks until the
    server forks, and a loop stalled for its imports misses heartbeats.  Nothing to
    do for spawn.  A server that dies later is started again by the next copy.
    """
    if ctx.get_start_method() != "forkserver":
        return
    probe = ctx.Process(target=os.getpid, name="glance-sync-forkserver-probe", daemon=True)
    start_process(ctx, probe)  # returns once the server forked it: its imports are done
    probe.join(timeout)


class TaskCancelled(GlanceSyncError):
    """A cancelled thread task tried another glance call."""

    message = "task %(task_id)s cancelled"
    retryable = True


def cancellable(sess: Any, cancelled: threading.Event, task_id: str) -> Any:
    """``sess`` (a keystoneauth1 Session) refusing every request once ``cancelled`` is set."""
    request = sess.request

    def checked(*args: Any, **kwargs: Any) -> Any:
        if cancelled.is_set():
            raise TaskCancelled(task_id=task_id)
        return request(*args, **kwargs)

    sess.request = checked
    return sess


class TaskThread:
    """A task run in an agent thread, with the part of the Process interface the pool uses."""

    pid = None

    def __init__(self, target: Callable[..., dict[str, Any]], task: dict[str, Any], settings: Any,
                 deliver: Callable[[str, dict[str, Any]], None]) -> None:
        self.cancelled = threading.Event()
        self._target, self._task, self._settings, self._deliver = target, task, settings, deliver
        self._thread = threading.Thread(target=self._run, name=f"glance-sync-task-{task['task_id']}", daemon=True)

    def _run(self) -> None:
        result = self._target(self._task, self._settings, self.cancelled)
        if not self.cancelled.is_set():
            self._deliver(self._task["task_id"], result)

    @property
    def exitcode(self) -> int | None:
        return None if self._thread.is_alive() else 0

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        self.cancelled.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


if _imported_by_fork_server():
    _arm_server()
