"""agent.task: progress throttling and the never-raising task runner."""

from __future__ import annotations

from agent import task as task_mod
from glancesync.storemap import GlanceEndpoint, Region, SshStore, StoreMap


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_sends_every_interval_and_every_five_percent_but_not_flooding():
    clock, sent = Clock(), []
    throttle = task_mod.ProgressThrottle(lambda d, t: sent.append(d), interval=1.0, clock=clock)
    throttle(0, 1000)
    assert sent == [0]
    clock.now = 0.1
    throttle(100, 1000)  # 10% but only 0.1 s later: held back
    assert sent == [0]
    clock.now = 0.3
    throttle(110, 1000)  # a new 5% step and past the minimum gap
    assert sent == [0, 110]
    clock.now = 0.9
    throttle(115, 1000)  # same step, interval not reached
    assert sent == [0, 110]
    clock.now = 1.31
    throttle(116, 1000)  # interval reached
    assert sent == [0, 110, 116]


def settings() -> task_mod.WorkerSettings:
    store = SshStore("h", 22, "u", "k", "kh", "/store")
    region = Region("RegionA", GlanceEndpoint(url="http://127.0.0.1:1"), "/tmp/work")
    return task_mod.WorkerSettings(StoreMap("x.yaml", store, {"RegionA": region}), "RegionA", ssh_timeout=1.0)


def test_unreachable_glance_is_a_retryable_failure_not_an_exception():
    task = {"task_id": "t", "attempt": 1, "kind": "delete", "image_id": "img-1", "region": "RegionA", "image": {}}
    result = task_mod.run_task(task, settings(), lambda d, t: None)
    assert result["outcome"] == "failed" and result["retryable"] is True


def test_unknown_kind_fails_not_retryable():
    task = {"task_id": "t", "attempt": 1, "kind": "explode", "image_id": "img-1", "region": "RegionA", "image": {}}
    result = task_mod.run_task(task, settings(), lambda d, t: None)
    assert result == {"outcome": "failed", "reason": "unknown task kind 'explode'", "retryable": False}
