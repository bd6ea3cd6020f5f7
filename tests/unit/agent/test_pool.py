"""agent.pool with real worker processes (forked from the pre-imported server, or spawned) and threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from agent import runners
from agent.pool import Pool
from tests.unit.agent import helpers

MODES = pytest.mark.parametrize("mode", runners.MODES)


def make(mode: str, workers: int, timeout: float, target, settings, **kwargs) -> Pool:
    return Pool(workers, timeout=timeout, target=target, settings=settings, context=runners.context(mode), **kwargs)


def wait_for_pid(pid_file) -> float:
    """Wait until the stuck target wrote its pid; the deadline the test may keep using."""
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return deadline


def run_until_result(pool: Pool, now_fn=time.monotonic, limit: float = 60.0):
    events = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        events += pool.poll(now_fn())
        if any(e.kind == "result" for e in events):
            return events
        time.sleep(0.05)
    raise AssertionError("no result from the pool")


def task(task_id: str = "t1") -> dict:
    return {"task_id": task_id, "attempt": 1, "kind": "copy", "image_id": "img"}


@MODES
def test_result_and_progress_come_back_and_slot_is_freed(mode):
    pool = make(mode, 2, 60, helpers.target_ok, None)
    try:
        pool.start(task(), time.monotonic())
        assert pool.free_slots() == 1 and pool.running_ids() == ["t1"]
        events = run_until_result(pool)
        kinds = [e.kind for e in events]
        assert kinds == ["progress", "result"]
        assert events[0].body == {"bytes_done": 50, "bytes_total": 100}
        assert events[1].body["outcome"] == "done" and events[1].body["pid"] != os.getpid()
        assert pool.free_slots() == 2
    finally:
        pool.shutdown()


@MODES
def test_stuck_worker_is_terminated_after_timeout(mode, tmp_path):
    pid_file = tmp_path / "pid"
    pool = make(mode, 1, 1.0, helpers.target_stuck, str(pid_file))
    try:
        start = time.monotonic()
        pool.start(task(), start)
        deadline = wait_for_pid(pid_file)
        assert pool.poll(start + 0.5) == []  # not overdue yet
        events = pool.poll(start + 2.0)
        assert len(events) == 1 and events[0].kind == "result"
        assert events[0].body["retryable"] is True and "timed out" in events[0].body["reason"]
        assert pool.free_slots() == 1
        pid = int(pid_file.read_text())
        # Terminated, and killed after the grace period by a later poll if it lingers.
        deadline = time.monotonic() + 60
        while _alive(pid):
            assert time.monotonic() < deadline, f"worker {pid} still runs"
            pool.poll(time.monotonic() + 10)
            time.sleep(0.05)
    finally:
        pool.shutdown()


@MODES
def test_dead_worker_reported_failed_with_exit_code(mode):
    pool = make(mode, 1, 60, helpers.target_crash, None)
    try:
        pool.start(task(), time.monotonic())
        events = run_until_result(pool)
        assert events[-1].body["outcome"] == "failed" and events[-1].body["retryable"] is True
        assert "code 7" in events[-1].body["reason"]
        assert pool.free_slots() == 1
    finally:
        pool.shutdown()


@MODES
def test_start_refuses_beyond_capacity(mode):
    pool = make(mode, 1, 60, helpers.target_ok, None)
    try:
        pool.start(task("a"), time.monotonic())
        try:
            pool.start(task("b"), time.monotonic())
        except RuntimeError:
            pass
        else:
            raise AssertionError("a second task started in a pool of one")
        run_until_result(pool)
    finally:
        pool.shutdown()


@MODES
def test_a_worker_outlives_a_stop_signal_sent_to_the_group_even_during_its_start(mode, tmp_path):
    pid_file = tmp_path / "pid"
    pool = make(mode, 1, 600, helpers.target_stuck, str(pid_file))
    try:
        pool.start(task(), time.monotonic())
        os.kill(pool.running["t1"].process.pid, signal.SIGTERM)  # at once: the worker is still starting
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the worker died of the SIGTERM"
            assert pool.running["t1"].process.is_alive(), "the worker died of the SIGTERM"
            time.sleep(0.05)
        assert pool.poll(time.monotonic()) == [] and pool.running_ids() == ["t1"]
        if mode == "pool":  # the fork server ignores the group's stop signals too
            server = _ppid(int(pid_file.read_text()))
            assert server != os.getpid()
            os.kill(server, signal.SIGTERM)
            os.kill(server, signal.SIGINT)
            assert _alive(server) and pool.poll(time.monotonic()) == [] and pool.running["t1"].process.is_alive()
    finally:
        pool.shutdown()


@MODES
def test_a_cancelled_worker_is_terminated_and_reports_nothing(mode, tmp_path):
    pid_file = tmp_path / "pid"
    pool = make(mode, 1, 600, helpers.target_stuck, str(pid_file))
    try:
        pool.start(task(), time.monotonic())
        deadline = wait_for_pid(pid_file)
        pid = int(pid_file.read_text())
        pool.cancel("t1", time.monotonic())
        assert pool.free_slots() == 1 and pool.running_ids() == []
        deadline = time.monotonic() + 60
        while _alive(pid):
            assert time.monotonic() < deadline, f"worker {pid} still runs"
            assert pool.poll(time.monotonic()) == []  # no result for a cancelled attempt
            time.sleep(0.05)
    finally:
        pool.shutdown()


# A stand-in agent: starts one stuck worker, then waits to be killed.
_AGENT_SCRIPT = """
import sys, time
from agent import runners
from agent.pool import Pool
from tests.unit.agent import helpers
if __name__ == "__main__":
    pool = Pool(1, timeout=600, target=helpers.target_stuck, settings=sys.argv[1], context=runners.context(sys.argv[2]))
    pool.start({"task_id": "t1", "attempt": 1, "kind": "copy", "image_id": "img"}, time.monotonic())
    time.sleep(600)
"""


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie, or a process gone, is not alive.

    A worker of the fork server is reaped by the server, at any moment: between the
    open and the read of its /proc file the read fails with ESRCH (ProcessLookupError).
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read().lower()
    except (FileNotFoundError, ProcessLookupError):
        return False


@MODES
def test_worker_dies_when_its_agent_is_killed(mode, tmp_path):
    pid_file = tmp_path / "pid"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    script = tmp_path / "agent_standin.py"
    script.write_text(_AGENT_SCRIPT)
    agent = subprocess.Popen([sys.executable, str(script), str(pid_file), mode], cwd=root,
                             env={**os.environ, "PYTHONPATH": root})
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert agent.poll() is None, "the stand-in agent exited early"
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent = _ppid(worker)  # the fork server in pool mode
        assert (parent == agent.pid) == (mode == "spawn")
        agent.kill()  # kill -9 of the agent alone, not of its process group
        agent.wait()
        deadline = time.monotonic() + 60
        while _alive(worker) or _alive(parent):
            assert time.monotonic() < deadline, f"worker {worker} (parent {parent}) outlived its agent"
            time.sleep(0.05)
    finally:
        agent.kill()
        if pid_file.exists() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


class _LingeringProcess:
    """A worker that has reported its result but does not exit; records every wait."""

    def __init__(self, **_kwargs) -> None:
        self.pid, self.alive, self.waits, self.killed = 4242, True, [], False

    def start(self) -> None:
        pass

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout=None) -> None:
        self.waits.append(timeout)

    def terminate(self) -> None:
        pass

    def kill(self) -> None:
        self.killed, self.alive = True, False


class _FakeContext:
    def __init__(self) -> None:
        import queue as queue_mod

        self.queues: list = []
        self.processes: list[_LingeringProcess] = []
        self._queue_mod = queue_mod

    def get_start_method(self) -> str:
        return "spawn"

    def Queue(self):  # noqa: N802 - multiprocessing's spelling
        queue = self._queue_mod.Queue()
        queue.close = queue.cancel_join_thread = lambda: None
        self.queues.append(queue)
        return queue

    def Process(self, **kwargs):  # noqa: N802
        process = _LingeringProcess(**kwargs)
        self.processes.append(process)
        return process


def test_poll_never_waits_for_a_worker_that_lingers_after_its_result():
    ctx = _FakeContext()
    pool = Pool(1, timeout=60, target=helpers.target_ok, settings=None, context=ctx)
    pool.start(task(), 0.0)
    ctx.queues[0].put(("result", "t1", {"outcome": "done"}))
    events = pool.poll(1.0)
    process = ctx.processes[0]
    assert [e.kind for e in events] == ["result"] and pool.free_slots() == 1
    assert all(not wait for wait in process.waits), process.waits  # no blocking join in the loop
    pool.poll(1.5)
    assert not process.killed
    pool.poll(1.0 + 2 * 2.0 + 1)  # past the grace period: killed, still without waiting
    assert process.killed and all(not wait for wait in process.waits)
    pool.poll(10.0)
    assert pool.exiting == []


def _result(pool: Pool, task_id: str) -> dict:
    pool.start(task(task_id), time.monotonic())
    return run_until_result(pool)[-1].body


def test_pool_mode_forks_every_copy_fresh_from_one_preloaded_server_so_no_state_passes(tmp_path):
    pool = make("pool", 1, 60, helpers.target_probe, str(tmp_path))
    try:
        first = _result(pool, "clean")
        pool.start(dict(task("dirty"), dirty=True), time.monotonic())
        dirty = run_until_result(pool)[-1].body
        after = _result(pool, "after")
    finally:
        pool.shutdown()
    # Forked by one long-lived server, with the task modules already imported.
    assert first["ppid"] == dirty["ppid"] == after["ppid"] != os.getpid()
    assert len({first["pid"], dirty["pid"], after["pid"]}) == 3
    assert first["preloaded"] and after["preloaded"]
    # What the dirty task left (env, cwd, an open file, module state) is not in the next one.
    assert after["env"] is None and after["cwd"] == first["cwd"] != str(tmp_path)
    assert after["leak_global"] is None
    assert not any("leaked-file" in path for path in after["fds"])
    assert _kinds(after["fds"]) == _kinds(first["fds"])  # pipes and sockets are new per task, not more


def _kinds(paths: list[str]) -> list[str]:
    return sorted(path.split(":[")[0] for path in paths)


@MODES
def test_a_worker_killed_mid_task_is_reported_failed_and_retryable_once(mode, tmp_path):
    pid_file = tmp_path / "pid"
    pool = make(mode, 1, 600, helpers.target_stuck, str(pid_file))
    try:
        pool.start(task(), time.monotonic())
        wait_for_pid(pid_file)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        events = run_until_result(pool)
        for _ in range(5):
            events += pool.poll(time.monotonic())
        results = [e.body for e in events if e.kind == "result"]
        assert len(results) == 1 and results[0]["retryable"] is True and "code -9" in results[0]["reason"]
        assert pool.free_slots() == 1
        # The next task runs (in pool mode: the server is still there to fork it).
        pool.target = helpers.target_ok
        assert _result(pool, "t2")["outcome"] == "done"
    finally:
        pool.shutdown()


def _inline_pool(target, settings, timeout: float = 600) -> Pool:
    return make("pool", 1, timeout, helpers.target_ok, settings, inline=target,
                inline_kinds=frozenset({"update", "delete"}))


def test_updates_and_deletes_run_in_an_agent_thread_and_copies_in_a_worker():
    pool = _inline_pool(helpers.inline_ok, None)
    try:
        for kind in ("update", "delete"):
            pool.start(dict(task(kind), kind=kind), time.monotonic())
            assert pool.free_slots() == 0
            body = run_until_result(pool)[-1].body
            assert body["pid"] == os.getpid() and body["thread"] == f"glance-sync-task-{kind}"
            assert pool.free_slots() == 1
        assert _result(pool, "copy")["pid"] != os.getpid()
    finally:
        pool.shutdown()


def test_a_cancelled_thread_task_is_told_to_stop_and_reports_nothing(tmp_path):
    said = tmp_path / "said"
    pool = _inline_pool(helpers.inline_wait, str(said))
    try:
        pool.start(dict(task(), kind="update"), time.monotonic())
        pool.cancel("t1", time.monotonic())
        assert pool.free_slots() == 1 and pool.running_ids() == []
        deadline = time.monotonic() + 60
        while not said.exists() or not said.read_text():
            assert time.monotonic() < deadline, "the thread was never told"
            assert pool.poll(time.monotonic()) == []
            time.sleep(0.05)
        assert said.read_text() == "cancelled"
        for _ in range(5):
            assert pool.poll(time.monotonic()) == []
        assert pool.exiting == []
    finally:
        pool.shutdown()


def test_an_overdue_thread_task_is_reported_failed_and_cancelled(tmp_path):
    said = tmp_path / "said"
    pool = _inline_pool(helpers.inline_wait, str(said), timeout=1.0)
    try:
        start = time.monotonic()
        pool.start(dict(task(), kind="delete"), start)
        assert pool.poll(start + 0.5) == []
        events = pool.poll(start + 2.0)
        assert [e.kind for e in events] == ["result"] and events[0].body["retryable"] is True
        assert "timed out" in events[0].body["reason"] and "thread cancelled" in events[0].body["reason"]
        deadline = time.monotonic() + 60
        while not said.exists() or not said.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert said.read_text() == "cancelled"
    finally:
        pool.shutdown()


def test_a_killed_fork_server_takes_its_workers_along_and_the_next_copy_starts_a_new_one(tmp_path):
    pid_file = tmp_path / "pid"
    pool = make("pool", 1, 600, helpers.target_stuck, str(pid_file))
    try:
        pool.start(task(), time.monotonic())
        deadline = wait_for_pid(pid_file)
        worker = int(pid_file.read_text())
        server = _ppid(worker)
        os.kill(server, signal.SIGKILL)
        results = [e.body for e in run_until_result(pool) if e.kind == "result"]
        for _ in range(5):
            results += [e.body for e in pool.poll(time.monotonic()) if e.kind == "result"]
        assert len(results) == 1 and results[0]["outcome"] == "failed" and results[0]["retryable"] is True
        deadline = time.monotonic() + 60
        while _alive(worker):
            assert time.monotonic() < deadline, f"worker {worker} outlived its fork server"
            time.sleep(0.05)
        pool.target = helpers.target_probe
        body = _result(pool, "t2")
        assert body["outcome"] == "done" and body["ppid"] not in (server, os.getpid()) and body["preloaded"]
    finally:
        pool.shutdown()


@MODES
def test_a_discarded_task_loses_its_part_once_the_worker_is_gone(mode, tmp_path):
    image_id = "11111111-2222-3333-4444-555555555555"
    part = tmp_path / f"{image_id}.part"
    part.write_bytes(b"partial")
    pid_file = tmp_path / "pid"
    pool = make(mode, 1, 600, helpers.target_stuck, str(pid_file), work_dir=str(tmp_path))
    try:
        pool.start({**task(), "image_id": image_id}, time.monotonic())
        deadline = wait_for_pid(pid_file)
        pool.cancel("t1", time.monotonic(), discard=True)
        while part.exists():
            assert time.monotonic() < deadline
            pool.poll(time.monotonic())
            time.sleep(0.05)
        assert not pool.discards.pending
    finally:
        pool.shutdown()
