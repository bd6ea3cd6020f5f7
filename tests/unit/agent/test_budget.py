"""agent.budget: the region's one bandwidth budget, shared by the fetches of every worker process."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import budget, ratelimit, transfer
from tests.unit.fakeclock import FakeClock

RATE = 1000.0  # bytes/s


def _bucket(path: Path, clock: FakeClock, burst: float = 0.0) -> budget.SharedBucket:
    return budget.SharedBucket(str(path), RATE, burst=burst, clock=clock)


# -- one bucket for the whole region ---------------------------------------------------------------


def test_two_fetches_draw_from_one_bucket_so_their_sum_holds_the_cap(tmp_path):
    clock = FakeClock(100.0)
    path = tmp_path / budget.BUDGET_NAME
    one, two = _bucket(path, clock, burst=500.0), _bucket(path, clock, burst=500.0)  # two workers' own opens
    assert one.charge(400) == 0.0  # within the burst
    assert two.charge(400) == pytest.approx(0.3)  # the other's bytes count: 300 bytes of debt
    clock.now += 0.3
    assert one.charge(1000) == pytest.approx(1.0)
    state = two.state()
    assert state.charged == 1800 and state.tokens == pytest.approx(-1000.0) and state.stamp == clock.now
    assert os.stat(path).st_mode & 0o777 == 0o600


def _simulate(path: Path, clock: FakeClock, ends: dict[str, float], until: float, block: int = 100) -> dict:
    """Copies whose link is far faster than the cap: each charges a block, waits as told, and goes on.

    Returns, per copy, the (time, bytes) of every block it received; a copy stops at its ``ends``.
    """
    buckets = {name: _bucket(path, clock, burst=2 * block) for name in ends}
    ready = dict.fromkeys(ends, clock.now)
    got: dict[str, list[tuple[float, int]]] = {name: [] for name in ends}
    while True:
        live = {name: at for name, at in ready.items() if at < min(ends[name], until)}
        if not live:
            return got
        name = min(live, key=live.__getitem__)
        clock.now = live[name]
        got[name].append((clock.now, block))
        ready[name] = clock.now + buckets[name].charge(block)


def _between(blocks: list[tuple[float, int]], start: float, end: float) -> int:
    return sum(size for at, size in blocks if start <= at < end)


def test_a_copy_left_alone_gets_the_whole_cap_once_the_other_ended(tmp_path):
    clock = FakeClock(100.0)
    got = _simulate(tmp_path / budget.BUDGET_NAME, clock, {"a": 130.0, "b": 110.0}, until=130.0)
    both = _between(got["a"], 100.0, 110.0) + _between(got["b"], 100.0, 110.0)
    assert both <= RATE * 10 + 2 * 200  # side by side, the two hold the cap together...
    assert _between(got["a"], 100.0, 110.0) == pytest.approx(RATE * 10 / 2, rel=0.1)  # ...about half each
    # Then b ends (or only uploads): a is not held to its half, it gets the cap.
    assert _between(got["a"], 110.0, 130.0) == pytest.approx(RATE * 20, rel=0.05)


_DIES_HOLDING = """
import fcntl, os, sys, time
from agent import budget
bucket = budget.SharedBucket(sys.argv[1], 1000.0, burst=0.0, clock=lambda: 100.0)
bucket.charge(5000)  # bytes it received: 5 s of debt at the cap
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)  # killed in the middle of a charge
print("holding", flush=True)
time.sleep(600)
"""


def test_a_worker_killed_while_holding_the_budget_leaves_only_its_debt_behind(tmp_path):
    path = tmp_path / budget.BUDGET_NAME
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    child = subprocess.Popen([sys.executable, "-c", _DIES_HOLDING, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline() == b"holding\n"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    clock = FakeClock(100.0)
    survivor = _bucket(path, clock)
    waits: list[float] = []
    charging = threading.Thread(target=lambda: waits.append(survivor.charge(1000)), daemon=True)
    charging.start()
    charging.join(60)  # a guard against a hang, not a measure: the lock died with its holder
    assert waits == [pytest.approx(6.0)]  # the dead worker's 5,000 bytes, then these 1,000
    clock.now += 6.0
    assert survivor.charge(1000) == pytest.approx(1.0)  # alone from now on: the whole cap, nothing withheld


def test_a_new_torn_or_pre_reboot_budget_file_starts_as_a_full_bucket(tmp_path):
    path = tmp_path / budget.BUDGET_NAME
    clock = FakeClock(100.0)
    assert _bucket(path, clock, burst=300.0).state() == budget.State(300.0, 100.0, 0)
    path.write_bytes(b"torn")
    assert _bucket(path, clock, burst=300.0).charge(300) == 0.0
    path.write_bytes(struct.pack("<ddQ", float("nan"), 50.0, 7))
    assert _bucket(path, clock, burst=300.0).state() == budget.State(300.0, 100.0, 0)
    path.write_bytes(struct.pack("<ddQ", -1e12, 50.0, 7))  # more debt than any fetch could owe
    assert _bucket(path, clock, burst=300.0).state().tokens == 300.0
    path.write_bytes(struct.pack("<ddQ", -200.0, 5000.0, 7))  # stamped by the clock of an earlier boot
    assert _bucket(path, clock, burst=300.0).state() == budget.State(-200.0, 100.0, 7)


def test_a_rate_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        budget.SharedBucket(str(tmp_path / "b"), 0.0)


# -- the pacer of one fetch -------------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.signals: list[int] = []

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


def test_the_pacer_reports_first_and_waits_for_the_bytes_past_the_resumed_prefix_only():
    clock = FakeClock(100.0)
    seen: list[tuple[int, int]] = []
    pacer = budget.Pacer(ratelimit.RateLimit(RATE, clock=clock), lambda d, t: seen.append((d, t)), start=5000,
                         sleep=clock.sleep)
    pacer.report(5500, 9000)
    pacer.report(7000, 9000)
    assert seen == [(5500, 9000), (7000, 9000)]
    assert sum(clock.sleeps) == pytest.approx(2.0)  # 2,000 new bytes, not 7,000


def test_a_writer_process_is_stopped_while_its_fetch_waits_and_continued_after():
    clock = FakeClock(100.0)
    writer = _Writer()
    during: list[list[int]] = []

    def sleep(seconds: float) -> None:
        during.append(list(writer.signals))
        clock.sleep(seconds)

    pacer = budget.Pacer(ratelimit.RateLimit(RATE, clock=clock), lambda d, t: None, sleep=sleep)
    pacer.attach(writer)
    pacer.report(500, 1000)
    assert during == [[signal.SIGSTOP]] and writer.signals == [signal.SIGSTOP, signal.SIGCONT]


def _state_becomes(pid: int, wanted: set[str]) -> str:
    """The process's state once it is one of ``wanted`` (signals land asynchronously), or its last one."""
    deadline = time.monotonic() + 30  # a guard against a hang, not a measure
    while True:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        if state in wanted or time.monotonic() > deadline:
            return state
        time.sleep(0.01)


def test_a_real_sftp_stand_in_is_stopped_for_the_wait():
    process = subprocess.Popen(["sleep", "60"])
    states: list[str] = []
    try:
        pacer = budget.Pacer(ratelimit.RateLimit(RATE, clock=FakeClock(0.0)), lambda d, t: None,
                             sleep=lambda seconds: states.append(_state_becomes(process.pid, {"T"})))
        pacer.attach(process)
        pacer.report(100, 100)
        states.append(_state_becomes(process.pid, {"S", "R"}))
    finally:
        process.kill()
        process.wait()
    assert states[0] == "T" and states[1] in ("S", "R")  # stopped while the fetch waited, running again after


def test_without_a_cap_progress_passes_unchanged(tmp_path):
    seen: list[tuple[int, int]] = []
    pacer = budget.pacer(transfer.FetchOptions(), lambda d, t: seen.append((d, t)))
    pacer.attach(_Writer())
    pacer.report(10**9, 10**9)
    assert pacer.bucket is None and seen == [(10**9, 10**9)]
    assert not (tmp_path / budget.BUDGET_NAME).exists()


def test_the_agent_shares_its_file_and_a_lone_fetch_has_a_bucket_of_its_own(tmp_path):
    path = str(tmp_path / budget.BUDGET_NAME)
    shared = budget.pacer(transfer.FetchOptions(rate_limit=RATE, budget_file=path), lambda d, t: None)
    assert isinstance(shared.bucket, budget.SharedBucket) and shared.bucket.path == path
    assert shared.bucket.burst == ratelimit.burst_for(RATE)
    alone = budget.pacer(transfer.FetchOptions(rate_limit=RATE), lambda d, t: None)
    assert isinstance(alone.bucket, ratelimit.RateLimit) and alone.bucket.burst == ratelimit.burst_for(RATE)
