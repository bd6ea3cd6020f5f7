"""Worker processes for the registrar's glance jobs, so their HTTP and JSON work leaves the loop's GIL.

With ``[coordinator] glance_worker_mode = processes`` each thread of the registrar's pool
owns one worker process (spawned, so it starts from a clean interpreter, not a fork of a
process with threads, sockets and a journal connection) and hands it each job: the job's
function (a module-level function, pickled by name) and its small picklable arguments go
down a pipe, its result comes back.  The thread waits on the pipe without holding the GIL,
so what the loop's process pays per job is the pickling of a task row and a result.

Each worker builds its glance clients once, from a picklable :class:`ClientSpec`, and keeps
them for its life.  Its log records come back up the same pipe and are handled by the
coordinator's own loggers (one log file, the same levels, no secret that a thread's line
would not show).  A worker that dies (killed, out of memory) closes its pipe: the job in
flight fails as retryable (:class:`WorkerLost`, so the registration is retried with its
backoff, never lost) and the thread's next job starts a new worker.  Workers ignore
SIGINT and SIGTERM: the coordinator stops them (``shutdown``) after its threads are done,
and one whose parent is gone sees the pipe close and exits.  A worker that ends by itself
before its first job (it cannot build its clients, a broken install) is not started again at
once: the next start waits 1, 2, 4... up to 60 s, and the jobs meanwhile fail as retryable,
instead of every job paying a second of CPU for a worker that will end the same way.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from coordinator.glancejobs import Clients
from glancesync import glance
from glancesync.exceptions import ConfigError, GlanceError
from glancesync.storemap import GlanceEndpoint

LOG = logging.getLogger(__name__)
STOP_SECONDS = 10.0
RESTART_DELAY = 1.0  # after a worker that could not start; doubled for each one in a row
MAX_RESTART_DELAY = 60.0


class WorkerLost(GlanceError):
    """The worker process running a job ended before it answered."""

    retryable = True


@dataclass(frozen=True)
class ClientSpec:
    """What a worker builds its glance clients from: the cascading endpoint and each region's."""

    cascading: GlanceEndpoint
    regions: Mapping[str, GlanceEndpoint]
    endpoint_name: str = field(default="cascading glance")

    def clients(self) -> Clients:
        return Clients(lambda: glance.make_client(self.cascading), self.regional_client, self.endpoint_name)

    def regional_client(self, region: str) -> Any:
        endpoint = self.regions.get(region)
        if endpoint is None:
            raise ConfigError(source="glance_store.yaml", detail=f"unknown region {region!r}")
        return glance.make_client(endpoint)


class _PipeLogHandler(logging.Handler):
    """Sends each record of the worker to the coordinator, rendered (no object that may not pickle)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = dict(record.__dict__)
            data["msg"], data["args"] = record.getMessage(), None
            if record.exc_info:
                data["exc_text"] = logging.Formatter().formatException(record.exc_info)
            data["exc_info"] = None
            self.conn.send(("log", data))
        except Exception:  # a log line must never cost the job its answer
            self.handleError(record)


def _serve(conn: Connection, make_clients: Callable[[], Any], levels: dict[str, int]) -> None:
    """A worker's life: build the clients, then answer one job at a time until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(conn)]
    for name, level in levels.items():
        (logging.getLogger(name) if name else root).setLevel(level)
    clients = make_clients()
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the coordinator is gone
        if request is None:
            return
        function, args = request
        try:
            reply = ("ok", function(clients, *args))
        except Exception as exc:
            reply = ("error", _portable(exc))
        conn.send(reply)


def _portable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return GlanceError(endpoint="worker process", detail=f"{type(exc).__name__}: {exc}")


def _log_levels() -> dict[str, int]:
    """The coordinator's logger levels, so a worker sends only the records that would be kept."""
    levels = {"": logging.getLogger().getEffectiveLevel()}
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


class _Worker:
    def __init__(self, ctx: Any, make_clients: Callable[[], Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, make_clients, _log_levels()),
                                   name="glance-sync-glance-worker", daemon=True)
        self.process.start()
        child.close()  # only the worker holds its end: its death closes the pipe for us
        self.jobs = 0  # answered; none when it ends is a start that failed


class WorkerProcesses:
    """One worker process per calling thread; ``call(function, *args)`` runs ``function(clients, *args)`` in it."""

    def __init__(self, make_clients: Callable[[], Any], start: int = 0, start_method: str = "spawn") -> None:
        """``start``: workers started now, each taken by the first thread that calls (a spawned
        worker takes about a second of CPU to import its modules: not on the first jobs' path)."""
        self._make_clients = make_clients
        self._ctx = multiprocessing.get_context(start_method)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._closed = False
        self._failed_starts = 0  # workers in a row that ended by themselves before a first job
        self._restart_at = 0.0  # monotonic time before which no new worker is started
        for _ in range(start):
            worker = _Worker(self._ctx, self._make_clients)
            self._workers.append(worker)
            self._idle.append(worker)
        if start:
            LOG.info("%d glance worker process(es) started", start)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        worker = self._worker()
        try:
            worker.conn.send((function, args))
            while True:
                kind, value = worker.conn.recv()
                if kind != "log":
                    break
                logging.getLogger(value["name"]).handle(logging.makeLogRecord(value))
        except (EOFError, OSError) as exc:
            code = self._lost(worker)
            raise WorkerLost(endpoint="worker process", retryable=True,
                             detail=f"worker {worker.process.pid} ended (exit code {code}) with this job "
                                    f"in flight ({type(exc).__name__}); retried") from None
        worker.jobs += 1
        self._failed_starts = 0
        if kind == "error":
            raise value
        return value

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers]

    def shutdown(self) -> None:
        """Stop every worker (call once no thread calls any more); none is left running."""
        with self._lock:
            self._closed, workers, self._workers, self._idle = True, self._workers, [], []
        for worker in workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in workers:
            worker.process.join(STOP_SECONDS)
            if worker.process.is_alive():
                LOG.warning("glance worker %d did not stop within %.0f s; killed", worker.process.pid, STOP_SECONDS)
                worker.process.kill()
                worker.process.join()
            worker.conn.close()

    def _worker(self) -> _Worker:
        worker = getattr(self._local, "worker", None)
        if worker is not None and worker.process.is_alive():
            return worker
        if worker is not None:
            self._lost(worker)
        while True:
            with self._lock:
                if self._closed:
                    raise WorkerLost(endpoint="worker process", retryable=True,
                                     detail="the coordinator is stopping")
                if not self._idle:
                    wait = self._restart_at - time.monotonic()
                    if wait > 0:
                        raise WorkerLost(endpoint="worker process", retryable=True,
                                         detail=f"{self._failed_starts} glance worker(s) in a row ended before a "
                                                f"first job; the next starts in {wait:.0f} s")
                    worker = self._local.worker = _Worker(self._ctx, self._make_clients)
                    self._workers.append(worker)
                    break
                worker = self._idle.pop()
            if worker.process.is_alive():
                self._local.worker = worker
                return worker
            self._lost(worker)  # ended before its first job: nothing was in flight
        LOG.info("glance worker process %d started", worker.process.pid)
        return worker

    def _lost(self, worker: _Worker) -> int | None:
        """Forget a worker that ended; its exit code."""
        worker.process.join(STOP_SECONDS)
        code = worker.process.exitcode
        LOG.error("glance worker process %d ended (exit code %s); a new one takes the next job", worker.process.pid, code)
        worker.conn.close()
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            if worker.jobs == 0 and code is not None and code >= 0:  # not killed: it could not start
                self._failed_starts += 1
                self._restart_at = time.monotonic() + min(MAX_RESTART_DELAY,
                                                            RESTART_DELAY * 2.0 ** (self._failed_starts - 1))
        if getattr(self._local, "worker", None) is worker:
            self._local.worker = None
        return code
