"""Shared pieces of the agent unit tests: a config, a fake pool, worker targets for the real pool.

Worker targets live in this importable module because the pool starts workers with
the ``spawn`` context, which imports the target by name in a fresh interpreter.
"""

from __future__ import annotations

import os
import time
from typing import Any

from oslo_config import cfg

from agent.pool import PoolEvent
from glancesync import opts


def make_conf(port: int, region: str = "RegionA", workers: int = 2, heartbeat: float = 1.0) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project="glance-sync-test", default_config_files=[])
    for name, value in {
        "region": region,
        "agent_id": "agent-1",
        "coordinator_host": "127.0.0.1",
        "coordinator_port": port,
        "workers": workers,
        "heartbeat_interval": heartbeat,
        "reconnect_max_backoff": 2.0,
    }.items():
        conf.set_override(name, value, group="agent")
    return conf


class FakePool:
    """Stands in for agent.pool.Pool in service tests: tasks run until the test finishes them."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self.running: dict[str, dict[str, Any]] = {}
        self.events: list[PoolEvent] = []
        self.shut = False
        self.cancelled: list[str] = []
        self.discarded: list[str] = []

    def free_slots(self) -> int:
        return self.workers - len(self.running)

    def running_ids(self) -> list[str]:
        return list(self.running)

    def is_running(self, task_id: str) -> bool:
        return task_id in self.running

    def running_image(self, image_id: str) -> str | None:
        return next((tid for tid, task in self.running.items() if task.get("image_id") == image_id), None)

    def start(self, task: dict[str, Any], now: float) -> None:
        self.running[task["task_id"]] = task

    def cancel(self, task_id: str, now: float, discard: bool = False) -> None:
        self.running.pop(task_id, None)
        self.cancelled.append(task_id)
        if discard:
            self.discarded.append(task_id)

    def progress(self, task_id: str, done: int, total: int) -> None:
        self.events.append(PoolEvent("progress", self.running[task_id], {"bytes_done": done, "bytes_total": total}))

    def finish(self, task_id: str, result: dict[str, Any]) -> None:
        self.events.append(PoolEvent("result", self.running.pop(task_id), result))

    def poll(self, now: float) -> list[PoolEvent]:
        events, self.events = self.events, []
        return events

    def shutdown(self) -> None:
        self.shut = True


# -- targets for the real pool (run in spawned processes) ----------------------


def target_ok(task: dict[str, Any], settings: Any, queue: Any) -> None:
    queue.put(("progress", task["task_id"], 50, 100))
    queue.put(("result", task["task_id"], {"outcome": "done", "size": 100, "pid": os.getpid()}))


def target_stuck(task: dict[str, Any], settings: Any, queue: Any) -> None:
    # Writes its pid so the test can check it is really gone afterwards.
    with open(settings, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(600)


def target_crash(task: dict[str, Any], settings: Any, queue: Any) -> None:
    os._exit(7)


def target_probe(task: dict[str, Any], settings: Any, queue: Any) -> None:
    """Reports what a task finds at its start; with ``dirty`` it then leaves state behind."""
    import sys

    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    found = {"outcome": "done", "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
             "env": os.environ.get("GLANCE_SYNC_TEST_LEAK"), "fds": sorted(fds.values()),
             "preloaded": "glanceclient.v2.client" in sys.modules, "leak_global": globals().get("_LEAKED")}
    if task.get("dirty"):
        os.environ["GLANCE_SYNC_TEST_LEAK"] = "1"
        globals()["_LEAKED"] = open(os.path.join(settings, "leaked-file"), "w")  # noqa: SIM115 - left open
        os.chdir(settings)
    queue.put(("result", task["task_id"], found))


def inline_ok(task: dict[str, Any], settings: Any, cancelled: Any) -> dict[str, Any]:
    import threading

    return {"outcome": "done", "pid": os.getpid(), "thread": threading.current_thread().name}


def inline_wait(task: dict[str, Any], settings: Any, cancelled: Any) -> dict[str, Any]:
    """Runs until cancelled, then says so in the file ``settings``."""
    cancelled.wait(600)
    with open(settings, "w") as handle:
        handle.write("cancelled" if cancelled.is_set() else "timed out")
    return {"outcome": "done"}
