"""agent.runners: cancellable sessions, thread tasks and the choice of start method."""

from __future__ import annotations

import os
import threading

import pytest
from keystoneauth1 import session

from agent import runners
from agent.cmd import INLINE_KINDS, build_pool
from tests.harness.procs import child_pids, cmdline


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def request(self, *args, **kwargs):
        self.calls.append(args)
        return "answer"


def test_a_cancelled_session_makes_no_further_request():
    sess, cancelled = _Recorder(), threading.Event()
    runners.cancellable(sess, cancelled, "t1")
    assert sess.request("/v2/images/x", "GET") == "answer"
    cancelled.set()
    with pytest.raises(runners.TaskCancelled) as info:
        sess.request("/v2/images/x", "PATCH")
    assert info.value.retryable and "t1" in str(info.value)
    assert sess.calls == [("/v2/images/x", "GET")]


def test_a_real_keystoneauth_session_routes_every_call_through_the_check():
    cancelled = threading.Event()
    cancelled.set()
    sess = runners.cancellable(session.Session(), cancelled, "t2")
    with pytest.raises(runners.TaskCancelled):
        sess.get("http://127.0.0.1:9/v2/images", authenticated=False)


def test_a_thread_task_delivers_its_result_unless_cancelled():
    got: list = []
    thread = runners.TaskThread(lambda task, settings, cancelled: {"outcome": "done"}, {"task_id": "a"}, None,
                                lambda tid, result: got.append((tid, result)))
    thread.start()
    thread.join(60)
    assert got == [("a", {"outcome": "done"})] and thread.exitcode == 0 and thread.pid is None

    def slow(task, settings, cancelled):
        assert cancelled.wait(60)
        return {"outcome": "done"}

    thread = runners.TaskThread(slow, {"task_id": "b"}, None, lambda tid, result: got.append((tid, result)))
    thread.start()
    thread.kill()
    thread.join(60)
    assert not thread.is_alive() and got == [("a", {"outcome": "done"})]


def test_modes_choose_the_start_method_and_what_runs_in_threads():
    assert runners.context("pool").get_start_method() == "forkserver"
    assert runners.context("spawn").get_start_method() == "spawn"
    with pytest.raises(ValueError):
        runners.context("fork")
    pool = build_pool("pool", 2, 60.0, settings=None)
    spawn = build_pool("spawn", 2, 60.0, settings=None)
    try:
        assert pool.inline_kinds == INLINE_KINDS == {"update", "delete"} and spawn.inline_kinds == frozenset()
        # The fork server is up before the first copy (its imports never stall the agent's loop).
        assert any("multiprocessing.forkserver" in cmdline(pid) for pid in child_pids(os.getpid()))
    finally:
        pool.shutdown()
        spawn.shutdown()


def test_only_the_fork_server_arms_itself_on_import():
    # Imported here (and in spawned workers) the module changes nothing: no pid to die with,
    # stop signals keep their handlers.
    assert runners.server_pid is None and not runners._imported_by_fork_server()
