"""Real services as child processes, for the end-to-end tests and the demo.

A :class:`ServiceProcess` runs one command in its own process group with stdout and
stderr appended to a log file.  Waiting for readiness polls a predicate; when it
fails (timeout, or the process exited first) the exception names the service and
quotes the tail of its log, so a broken start explains itself in the test report.
``kill()`` sends any signal to the whole group (SIGKILL for crash tests), ``stop()``
is SIGTERM then SIGKILL after a grace period and may be called any number of times.

Also: ``free_port()`` and ``wait_tcp()`` on 127.0.0.1 only; ``child_pids()`` and
``cmdline()`` read /proc (the fault campaign finds an agent's workers with them).
No pytest imports here: the demo uses this package outside pytest.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
TAIL_LINES = 30
ERROR_LINES = 12
# Lines worth quoting first when a start fails: log levels and Python exceptions.
_ERROR_RE = re.compile(
    r"\b(ERROR|CRITICAL|FATAL)\b|^Traceback|^[\w.]+(Error|Exception|Failure): |^Got: |fatal:"
)

_given_ports: set[int] = set()
_ports_lock = threading.Lock()
# Every started service, so that none outlives the Python process that started it.
_started: weakref.WeakSet[ServiceProcess] = weakref.WeakSet()


class ServiceError(RuntimeError):
    """A service did not start, or did not become ready, in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and not handed out before by this process."""
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = sock.getsockname()[1]
            if port not in _given_ports:
                _given_ports.add(port)
                return port
    raise ServiceError("no free port found on 127.0.0.1")


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_tcp(host: str, port: int, timeout: float = 30.0) -> None:
    """Wait until host:port accepts TCP connections; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not tcp_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing accepts TCP on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.05)


def read_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def read_errors(path: Path, offset: int = 0, limit: int = ERROR_LINES) -> list[str]:
    """The last ``limit`` error-looking lines of a log, from byte ``offset`` (at most the last 1 MiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, fh.tell() - 1024 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if _ERROR_RE.search(line)][-limit:]


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc; [] when it is gone)."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        # A thread that ended since the listing has no children left: skip it, not its siblings.
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                children += [int(word) for word in fh.read().split()]
        except OSError:
            continue
    return children


def cmdline(pid: int) -> str:
    """The command line of ``pid``, words joined by spaces ('' when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


class ServiceProcess:
    """One real service: a command, its log file, its lifecycle."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        grace: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(os.environ, **(env or {}))
        self.cwd = str(cwd) if cwd is not None else None
        self.grace = grace
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"<ServiceProcess {self.name} pid={self.pid} rc={self.returncode}>"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ServiceProcess:
        """Start the command (a no-op when it is running already)."""
        if self.running:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"==== {time.strftime('%H:%M:%S')} start {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        _started.add(self)
        return self

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of this service's log."""
        return read_tail(self.log_path, lines)

    def failure(self, what: str) -> ServiceError:
        """An exception naming the service, saying ``what`` and quoting the log tail."""
        rc = self.returncode
        state = f"exited with code {rc}" if rc is not None else "still running"
        errors = read_errors(self.log_path, self._log_offset)
        quoted = f"error lines of this run:\n{chr(10).join(errors)}\n" if errors else ""
        return ServiceError(
            f"service {self.name!r} {what} ({state}, pid {self.pid}); log {self.log_path}\n"
            f"{quoted}last {TAIL_LINES} lines:\n{self.log_tail()}"
        )

    def wait_ready(self, predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> None:
        """Poll ``predicate`` until true; raise ServiceError on exit or timeout."""
        if self.proc is None:
            raise ServiceError(f"service {self.name!r} was never started")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                time.sleep(0.05)  # let the last log lines land
                raise self.failure("exited before it was ready")
            try:
                if predicate():
                    return
            except Exception:  # a probe that raises just means "not ready yet"
                pass
            if time.monotonic() > deadline:
                raise self.failure(f"not ready after {timeout:.0f}s")
            time.sleep(interval)

    def kill(self, sig: int = signal.SIGKILL, *, group: bool = True) -> None:
        """Send ``sig`` to the service's process group (or only its main process)."""
        if not self.running:
            return
        assert self.proc is not None
        try:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.proc.wait()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end and return its exit code."""
        if self.proc is None:
            raise ServiceError(f"service {self.name!r} was never started")
        return self.proc.wait(timeout)

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; safe to call again."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(self.grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
        self._reap_group()
        return self.proc.returncode

    def _reap_group(self) -> None:
        """Kill what is left of the group (children that outlived their parent)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def restart(self, grace: float | None = None) -> ServiceProcess:
        """Stop (if running) and start again with the same command, log appended."""
        self.stop(grace)
        self.proc = None
        return self.start()


@atexit.register
def _stop_leftovers() -> None:
    for service in list(_started):
        service.stop(grace=3)
