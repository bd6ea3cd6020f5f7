"""agent.ratelimit and its wiring: max_bandwidth in bytes/s, ``sftp -l``, the paramiko window and reader, the pool."""

from __future__ import annotations

import hashlib
import signal
import time

import pytest

from agent import budget, cmd, ratelimit, sftp_openssh, sshconnect, transfer
from agent.pool import Pool
from tests.unit.agent import helpers
from tests.unit.agent.test_budget import _Writer
from tests.unit.agent.test_pool import _FakeContext
from tests.unit.agent.test_sftp_openssh import STORE as SSH_STORE
from tests.unit.agent.test_sftp_openssh import fake_sftp
from tests.unit.agent.test_transfer import DATA, STORE, _Client, _Remote, _Sftp, image_of
from tests.unit.fakeclock import FakeClock

# -- the limiter ---------------------------------------------------------------------------


def test_without_burst_n_bytes_take_at_least_n_over_rate():
    clock = FakeClock(100.0)
    limit = ratelimit.RateLimit(1000.0, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        limit.take(500)
    assert clock.now - 100.0 == pytest.approx(5.0)  # 5,000 bytes at 1,000 bytes/s


def test_a_slow_reader_is_not_slowed_further_and_idle_time_buys_at_most_the_burst():
    clock = FakeClock(100.0)
    limit = ratelimit.RateLimit(1000.0, burst=200.0, clock=clock, sleep=clock.sleep)
    assert limit.take(200) == 0.0  # the initial burst
    clock.now += 10.0  # a reader busy elsewhere for 10 s: 10,000 tokens earned, only 200 kept
    assert limit.take(150) == 0.0
    assert limit.take(1050) == pytest.approx(1.0)  # 50 tokens left, 1,000 bytes of debt


def test_over_any_interval_at_most_burst_plus_rate_times_t_pass():
    clock = FakeClock(100.0)
    limit = ratelimit.RateLimit(2000.0, burst=1000.0, clock=clock, sleep=clock.sleep)
    passed = 0
    for size in [300, 5000, 17, 900, 4096, 1, 2500] * 5:
        limit.take(size)
        passed += size
        assert passed <= 1000.0 + 2000.0 * (clock.now - 100.0) + size  # the last block is paid after it passed
    assert passed <= 1000.0 + 2000.0 * (clock.now - 100.0) + 1e-6


def test_a_rate_must_be_positive():
    with pytest.raises(ValueError):
        ratelimit.RateLimit(0.0)


def test_a_bucket_holds_a_quarter_second_of_the_cap_and_at_least_one_charged_block():
    assert ratelimit.burst_for(100e6) == 25e6
    assert ratelimit.burst_for(1000.0) == ratelimit.MIN_BURST_BYTES


# -- the cap, the sftp -l value and the window ---------------------------------------------------


def test_the_cap_is_max_bandwidth_in_bytes_per_second():
    assert ratelimit.cap_bytes(0.0) == 0.0
    assert ratelimit.cap_bytes(100.0) == 12_500_000.0


def test_sftp_limit_is_in_openssh_kbit_rounded_down_so_the_copy_stays_under_the_cap():
    limit = ratelimit.sftp_limit(12_500_000.0)  # 100 Mbit/s
    assert limit == 97656  # OpenSSH's Kbit/s is 1,024 bit/s (sftp.c)
    assert limit * 1024 <= 100e6 < (limit + 1) * 1024
    assert ratelimit.sftp_limit(0.0) == 0
    assert ratelimit.sftp_limit(10.0) == 1  # never 0, which would mean no limit at all
    assert ratelimit.sftp_limit(1e15) == 100 * 1024 * 1024  # the most sftp accepts


def test_a_capped_paramiko_window_is_about_one_second_of_the_rate():
    window = 32 * 1024 * 1024
    assert ratelimit.window(window, 0.0) == window
    assert ratelimit.window(window, 6_250_000.0) == 6_250_000
    assert ratelimit.window(window, 100_000.0) == ratelimit.MIN_WINDOW_BYTES
    assert ratelimit.window(window, 1e9) == window


def test_sftp_gets_l_only_when_capped():
    assert "-l" not in sftp_openssh.command(SSH_STORE, "sftp", 5.0)
    argv = sftp_openssh.command(SSH_STORE, "sftp", 5.0, limit=48828)
    assert argv[argv.index("-l") + 1] == "48828" and argv[-1] == "store.example.com"


def test_the_limit_reaches_the_sftp_process(tmp_path):
    dest = tmp_path / "img.part"
    dest.touch()
    seen = tmp_path / "argv"
    binary = fake_sftp(tmp_path, f'cat > /dev/null\nprintf abc >> {dest}\nprintf "%s\\n" "$@" > {seen}\n')
    sftp_openssh.run(SSH_STORE, "img", "/images/x", str(dest), (hashlib.md5(),), lambda d: None,
                     idle_timeout=30.0, connect_timeout=5.0, binary=binary, limit=4096)
    argv = seen.read_text().splitlines()
    assert argv[argv.index("-l") + 1] == "4096"


def test_the_budget_is_told_the_sftp_process_it_may_stop(tmp_path):
    dest = tmp_path / "img.part"
    dest.touch()
    binary = fake_sftp(tmp_path, f'cat > /dev/null\nprintf abc >> {dest}\n')
    spawned = []
    sftp_openssh.run(SSH_STORE, "img", "/images/x", str(dest), (hashlib.md5(),), lambda d: None,
                     idle_timeout=30.0, connect_timeout=5.0, binary=binary, on_spawn=spawned.append)
    assert [process.args[0] for process in spawned] == [binary] and spawned[0].returncode == 0


def test_an_openssh_fetch_passes_the_whole_cap_as_sftp_l_and_stops_sftp_while_the_budget_is_in_debt(
        tmp_path, monkeypatch):
    calls, writer = [], _Writer()

    def run(store, image_id, remote, local, hashers, progress, idle, connect, binary, on_start, limit=0,
            on_spawn=None):
        calls.append(limit)
        on_spawn(writer)
        progress(len(DATA))  # the follower found every byte in the .part
        raise transfer.TransferError(image_id=image_id, detail="stop here")

    monkeypatch.setattr(sshconnect, "connect", lambda store, image_id, timeout: _Client(len(DATA)))
    monkeypatch.setattr(sshconnect, "open_sftp", lambda client, window: client.open_sftp())
    monkeypatch.setattr(transfer.sftp_openssh, "run", run)
    path = tmp_path / budget.BUDGET_NAME
    rate = 6_250_000.0  # 50 Mbit/s
    budget.SharedBucket(str(path), rate, burst=0.0).charge(100_000)  # another copy's bytes: the budget owes
    options = transfer.FetchOptions(method="openssh", rate_limit=rate, budget_file=str(path))
    with pytest.raises(transfer.TransferError):
        transfer.fetch(STORE, image_of(DATA), "/store/images/img", str(tmp_path / "img-1.part"),
                       lambda d, t: None, options=options)
    assert calls == [48828]  # sftp -l: the cap, not a fraction of it; the budget shares it
    assert writer.signals == [signal.SIGSTOP, signal.SIGCONT]
    assert budget.SharedBucket(str(path), rate).state().charged == 100_000 + len(DATA)


class _Readable(_Remote):
    def readv(self, pieces, max_concurrent_prefetch_requests=None):
        for offset, length in pieces:
            yield DATA[offset:offset + length]


class _ReadableSftp(_Sftp):
    def open(self, path, mode):
        return _Readable(self.size)


class _ReadableClient(_Client):
    def open_sftp(self):
        return _ReadableSftp(self.size)


def test_a_capped_paramiko_fetch_takes_at_least_size_over_rate_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setattr(sshconnect, "connect", lambda store, image_id, timeout: _ReadableClient(len(DATA)))
    monkeypatch.setattr(sshconnect, "open_sftp", lambda client, window: client.open_sftp())
    rate = 4_000_000.0  # DATA is 3 MB, 1 MiB of it within the burst: at least 0.49 s
    path = tmp_path / budget.BUDGET_NAME
    options = transfer.FetchOptions(method="paramiko", rate_limit=rate, budget_file=str(path))
    started = time.monotonic()
    fetched = transfer.fetch(STORE, image_of(DATA), "/store/images/img", str(tmp_path / "img-1.part"),
                             lambda d, t: None, options=options)
    assert time.monotonic() - started >= (len(DATA) - ratelimit.burst_for(rate)) / rate
    assert fetched.size == len(DATA) and fetched.checksum == hashlib.md5(DATA).hexdigest()
    assert budget.SharedBucket(str(path), rate).state().charged == len(DATA)  # drawn from the region's budget


# -- the options: concurrency and the shared budget -----------------------------------------------


def _agent(workers: int, copies: int, mbit: float, window_mib: int = 32):
    conf = helpers.make_conf(1, workers=workers)
    conf.set_override("max_concurrent_copies", copies, group="agent")
    conf.set_override("max_bandwidth", mbit, group="agent")
    conf.set_override("paramiko_window_mib", window_mib, group="agent")
    conf.set_override("fetch_method", "paramiko", group="agent")
    return conf.agent


@pytest.mark.parametrize(("workers", "copies", "slots"), [(4, 0, 4), (4, 2, 2), (4, 9, 4), (1, 0, 1)])
def test_copy_slots_default_to_workers_and_never_exceed_them(workers, copies, slots):
    assert cmd.copy_slots(_agent(workers, copies, 0.0)) == slots


@pytest.mark.parametrize(("workers", "copies"), [(4, 0), (4, 2), (3, 1), (2, 8)])
def test_every_copy_draws_the_whole_cap_from_the_budget_in_the_work_dir(workers, copies, tmp_path):
    options = cmd.fetch_options(_agent(workers, copies, 200.0), str(tmp_path))
    assert options.rate_limit * 8 == pytest.approx(200e6)  # whatever the number of copies
    assert options.budget_file == str(tmp_path / ".bandwidth")
    assert ratelimit.sftp_limit(options.rate_limit) * 1024 <= 200e6
    assert options.window_bytes <= 32 * 1024 * 1024


def test_no_cap_by_default():
    conf = helpers.make_conf(1)
    options = cmd.fetch_options(conf.agent, "/var/lib/glance-sync/work")
    assert conf.agent.max_bandwidth == 0 and conf.agent.max_concurrent_copies == 0
    assert options.rate_limit == 0 and options.budget_file == "" and options.window_bytes == conf.agent.paramiko_window_mib * 1024 * 1024


# -- the pool holds copies beyond max_copies back ------------------------------------------------


def _task(task_id: str, kind: str = "copy") -> dict:
    return {"task_id": task_id, "attempt": 1, "kind": kind, "image_id": f"img-{task_id}"}


def test_copies_beyond_max_copies_wait_holding_their_slot_and_start_in_order():
    ctx = _FakeContext()
    pool = Pool(4, timeout=60, target=helpers.target_ok, settings=None, context=ctx, max_copies=1)
    pool.start(_task("c1"), 0.0)
    pool.start(_task("c2"), 0.0)
    pool.start(_task("c3"), 0.0)
    assert len(ctx.processes) == 1  # one copy runs, two wait
    assert pool.free_slots() == 1 and pool.running_ids() == ["c1", "c2", "c3"]
    assert pool.is_running("c2") and pool.running_image("img-c3") == "c3"
    pool.start(_task("u1", "update"), 0.0)  # not a copy: not held back
    assert len(ctx.processes) == 2 and pool.free_slots() == 0
    pool.cancel("c2", 0.5)  # a waiting copy just goes
    assert len(ctx.processes) == 2 and pool.running_ids() == ["c1", "u1", "c3"]
    ctx.queues[0].put(("result", "c1", {"outcome": "done"}))
    events = pool.poll(1.0)
    assert [(e.kind, e.task["task_id"]) for e in events] == [("result", "c1")]
    assert len(ctx.processes) == 3 and pool.running["c3"].started == 1.0  # its timeout counts from here
    assert pool.copies_running() == 1


def test_without_max_copies_every_slot_may_copy():
    ctx = _FakeContext()
    pool = Pool(3, timeout=60, target=helpers.target_ok, settings=None, context=ctx)
    for name in ("c1", "c2", "c3"):
        pool.start(_task(name), 0.0)
    assert len(ctx.processes) == 3 and not pool.waiting
