"""The registrar's worker processes (coordinator/glanceprocs.py): results come back, a killed worker's
job fails as retryable and a new worker takes the next, log lines reach the coordinator's log, and
shutdown leaves no child process.  The job functions below run in the spawned workers."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator import glanceprocs
from coordinator.glancejobs import Clients, TaskResult
from coordinator.glanceprocs import ClientSpec, WorkerLost, WorkerProcesses
from coordinator.registrar import Registrar
from glancesync.exceptions import ConfigError, GlanceError
from glancesync.storemap import GlanceEndpoint

from .conftest import IMAGE_ID, FakeClient, image_record
from .test_registrar import good_report, regional_record, task

# Spawning a worker imports the coordinator's modules: slow on a loaded machine.
PATIENCE = 120.0


def counting_clients() -> Clients:
    built = []
    return Clients(lambda: built.append(1) or len(built), lambda region: region, "fake")


def whoami(clients: Clients, value: Any) -> tuple[int, Any, int]:
    return os.getpid(), value, clients.cascading()


def refuse(_clients: Clients) -> None:
    raise GlanceError(endpoint="fake", retryable=False, detail="refused for good")


def speak(_clients: Clients, words: str) -> None:
    logging.getLogger("coordinator.glancejobs").warning("worker %d says %s", os.getpid(), words)


def wait_for(_clients: Clients, started: str, release: str) -> int:
    Path(started).write_text(str(os.getpid()))
    while not Path(release).exists():
        time.sleep(0.01)
    return os.getpid()


def broken_clients() -> Clients:
    raise RuntimeError("this install cannot build a glance client")


@pytest.fixture
def workers():
    pool = WorkerProcesses(counting_clients)
    yield pool
    pool.shutdown()


def until(condition, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.01)


def test_a_job_runs_in_a_worker_process_that_keeps_its_clients(workers) -> None:
    pid, value, built = workers.call(whoami, {"image": IMAGE_ID})
    assert pid != os.getpid() and value == {"image": IMAGE_ID} and built == 1
    assert workers.call(whoami, 2) == (pid, 2, 1), "a second job of the thread went to a new worker or new clients"
    assert workers.pids() == [pid]


def test_each_thread_has_its_own_worker(workers) -> None:
    pids = []
    thread = threading.Thread(target=lambda: pids.append(workers.call(whoami, 0)[0]))
    thread.start()
    thread.join()
    pids.append(workers.call(whoami, 0)[0])
    assert len(set(pids)) == 2 and sorted(workers.pids()) == sorted(pids)


def test_a_job_error_comes_back_as_the_same_exception(workers) -> None:
    with pytest.raises(GlanceError, match="refused for good") as raised:
        workers.call(refuse)
    assert raised.value.retryable is False


def test_a_workers_log_lines_reach_the_coordinators_loggers(workers, caplog) -> None:
    with caplog.at_level(logging.INFO):
        workers.call(speak, "hello")
    (record,) = [r for r in caplog.records if "says hello" in r.getMessage()]
    assert record.name == "coordinator.glancejobs" and record.levelno == logging.WARNING
    assert record.getMessage() != f"worker {os.getpid()} says hello"


def test_a_killed_workers_job_fails_as_retryable_and_a_new_worker_takes_the_next(workers, tmp_path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    failed: list[BaseException] = []

    def job() -> None:
        try:
            workers.call(wait_for, str(started), str(release))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    until(started.exists, "the job to start")
    dead = int(started.read_text())
    os.kill(dead, signal.SIGKILL)
    thread.join(PATIENCE)
    (error,) = failed
    assert isinstance(error, WorkerLost) and error.retryable and str(dead) in str(error)
    assert workers.pids() == []
    release.touch()
    pid, _value, _built = workers.call(whoami, 1)
    assert pid != dead and workers.pids() == [pid]


def test_shutdown_leaves_no_child(tmp_path) -> None:
    pool = WorkerProcesses(counting_clients)
    threads = [threading.Thread(target=pool.call, args=(whoami, n)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pids = pool.pids()
    assert len(pids) == 3
    pool.shutdown()
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # ended and reaped, not a zombie
            os.kill(pid, 0)
    with pytest.raises(WorkerLost):
        pool.call(whoami, 0)
    assert pool.pids() == []


def test_client_spec_builds_a_client_per_known_region_and_refuses_others() -> None:
    spec = ClientSpec(GlanceEndpoint(url="http://cascading"), {"RegionOne": GlanceEndpoint(url="http://one")})
    clients = spec.clients()
    assert clients.regional("RegionOne") is clients.regional("RegionOne")
    with pytest.raises(ConfigError, match="unknown region 'Mars'"):
        clients.regional("Mars")


# -- the registrar with worker processes ---------------------------------------------------------


def held_clients(hold_dir: str) -> Clients:
    """Fake glances built inside the worker; reading the cascading image waits while ``hold`` exists."""
    cascading, regional = FakeClient(), FakeClient()
    cascading.images.records[IMAGE_ID] = image_record()
    regional.images.records[IMAGE_ID] = regional_record()
    get = cascading.images.get

    def held_get(image_id: str) -> dict[str, Any]:
        if (Path(hold_dir) / "hold").exists():
            (Path(hold_dir) / f"started-{os.getpid()}").touch()
            while (Path(hold_dir) / "hold").exists():
                time.sleep(0.01)
        return get(image_id)

    cascading.images.get = held_get
    return Clients(lambda: cascading, lambda _region: regional, "http://cascading")


def wait_result(registrar: Registrar) -> TaskResult:
    results: list = []
    until(lambda: results.extend(registrar.results()) or results, "a result")
    (result,) = results
    return result


@pytest.fixture
def process_registrar(tmp_path):
    registrar = Registrar(lambda: None, 1, "http://cascading", regional_client_factory=lambda _r: None,
                          processes=WorkerProcesses(functools.partial(held_clients, str(tmp_path))))
    yield registrar
    registrar.shutdown()


def test_a_registration_is_verified_and_registered_in_a_worker(process_registrar) -> None:
    process_registrar.register(task(report=good_report()))
    result = wait_result(process_registrar)
    assert result.ok and (result.task_id, result.attempt) == ("t1", 3)
    assert process_registrar.processes.pids() and os.getpid() not in process_registrar.processes.pids()


def test_a_registration_whose_worker_is_killed_comes_back_retryable_then_succeeds(process_registrar,
                                                                                   tmp_path) -> None:
    (tmp_path / "hold").touch()
    process_registrar.register(task(report=good_report()))
    until(lambda: list(tmp_path.glob("started-*")), "the registration to reach the worker")
    dead = int(next(tmp_path.glob("started-*")).name.removeprefix("started-"))
    os.kill(dead, signal.SIGKILL)
    result = wait_result(process_registrar)
    assert (result.task_id, result.attempt, result.ok, result.retryable) == ("t1", 3, False, True)
    assert "worker" in result.reason and not result.redo_transfer, "a lost worker must not throw the copy away"
    (tmp_path / "hold").unlink()
    process_registrar.register(dataclasses.replace(task(report=good_report()), attempt=3))
    assert wait_result(process_registrar).ok
    assert dead not in process_registrar.processes.pids()


def test_workers_started_up_front_take_the_first_jobs() -> None:
    pool = WorkerProcesses(counting_clients, start=2)
    try:
        started = set(pool.pids())
        assert len(started) == 2
        pid, _value, _built = pool.call(whoami, 0)
        assert pid in started and set(pool.pids()) == started
    finally:
        pool.shutdown()


def test_a_worker_that_cannot_start_is_not_started_again_at_once(monkeypatch) -> None:
    monkeypatch.setattr(glanceprocs, "RESTART_DELAY", 3600.0)
    monkeypatch.setattr(glanceprocs, "MAX_RESTART_DELAY", 3600.0)
    pool = WorkerProcesses(broken_clients)
    try:
        with pytest.raises(WorkerLost) as first:
            pool.call(whoami, 1)
        assert first.value.retryable and "ended" in str(first.value)
        with pytest.raises(WorkerLost) as second:
            pool.call(whoami, 2)
        assert second.value.retryable
        assert "1 glance worker(s) in a row ended before a first job; the next starts in" in str(second.value)
        assert pool.pids() == []  # no second worker spawned for the second job
    finally:
        pool.shutdown()


def test_a_killed_worker_is_not_counted_as_one_that_could_not_start(workers) -> None:
    pid = workers.call(whoami, 1)[0]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerLost):
        workers.call(whoami, 2)
    assert workers.call(whoami, 3)[1] == 3  # a new worker at once
