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


def test_failure_reasons_and_log_lines_never_carry_secrets(monkeypatch, caplog):
    def leaky(task, settings, progress):
        raise RuntimeError('auth failed: {"password": "s3cret-pw"} X-Auth-Token: gAAAAtok3n '
                           '{"X-Auth-Token": "gAAAAtok3n"} application_credential_secret=appsecr3t')

    monkeypatch.setattr(task_mod, "_dispatch", leaky)
    task = {"task_id": "t", "attempt": 1, "kind": "copy", "image_id": "img-1", "region": "RegionA", "image": {}}
    with caplog.at_level("DEBUG"):
        result = task_mod.run_task(task, settings(), lambda d, t: None)
    assert result["outcome"] == "failed" and result["retryable"] is True
    logged = caplog.text + "".join(str(r.exc_info) for r in caplog.records)
    for secret in ("s3cret-pw", "gAAAAtok3n", "appsecr3t"):
        assert secret not in result["reason"] and secret not in logged
    assert "RuntimeError" in result["reason"] and "auth failed" in caplog.text


def test_worker_process_logs_through_oslo_log_to_the_agents_log_file(tmp_path):
    """A spawned worker writes to the agent's --log-file, in oslo.log's format."""
    import time

    from agent.pool import Pool
    from glancesync import config

    log_file = tmp_path / "agent.log"
    conf = config.load(["--log-file", str(log_file)], "glance-sync-agent", setup_logging=False)
    worker_settings = task_mod.WorkerSettings(
        settings().store_map, "RegionA", log_options=task_mod.logging_options(conf)
    )
    pool = Pool(1, 60.0, task_mod.worker_main, worker_settings)
    try:
        # No "kind": a KeyError inside the worker, logged as an unexpected failure.
        pool.start({"task_id": "t-log", "attempt": 1, "image_id": "img-1"}, time.monotonic())
        deadline, events = time.monotonic() + 60, []
        while time.monotonic() < deadline and not any(e.kind == "result" for e in events):
            events += pool.poll(time.monotonic())
            time.sleep(0.05)
    finally:
        pool.shutdown()
    result = next(e for e in events if e.kind == "result")
    assert result.body["outcome"] == "failed"
    text = log_file.read_text() if log_file.exists() else ""
    line = next((ln for ln in text.splitlines() if "t-log" in ln), "")
    # oslo.log's default format: "<date> <time>.<ms> <pid> ERROR agent.task [-] ..."
    assert " ERROR agent.task [-] task t-log failed unexpectedly" in line, text


def test_failure_reasons_carry_no_terminal_control_characters(monkeypatch):
    from glancesync.exceptions import GlanceError

    def hostile(task, settings, progress):
        raise GlanceError(endpoint="http://r", detail="409 <html>\x1b[2J\x1b]0;owned\x07\r\nbody\x9b</html>")

    monkeypatch.setattr(task_mod, "_dispatch", hostile)
    task = {"task_id": "t", "attempt": 1, "kind": "copy", "image_id": "img-1", "region": "RegionA", "image": {}}
    reason = task_mod.run_task(task, settings(), lambda d, t: None)["reason"]
    assert not any(c in reason for c in "\x1b\x07\r\n\x9b")
    assert "409 <html>\\x1b[2J\\x1b]0;owned\\x07  body\\x9b</html>" in reason
