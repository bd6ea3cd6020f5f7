"""agent.task: progress throttling and the never-raising task runner."""

from __future__ import annotations

from agent import task as task_mod
from glancesync.storemap import GlanceEndpoint, Region, SshStore, StoreMap
from tests.unit.fakeclock import FakeClock


def test_throttle_sends_every_interval_and_every_five_percent_but_not_flooding():
    clock, sent = FakeClock(), []
    throttle = task_mod.ProgressThrottle(lambda d, t, p: sent.append(d), interval=1.0, clock=clock)
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
    def leaky(task, settings, progress, phase, cancelled=None):
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


class FakeImages:
    def __init__(self, records: dict, data: bytes = b"") -> None:
        self.records, self.payload = records, data

    def get(self, image_id):
        from glanceclient import exc

        if image_id not in self.records:
            raise exc.HTTPNotFound("no image")
        return dict(self.records[image_id])

    def data(self, image_id):
        return iter([self.payload])


class FakeClient:
    def __init__(self, records: dict, data: bytes = b"") -> None:
        self.images = FakeImages(records, data)


def digest_record(data: bytes, algo: str) -> dict:
    import hashlib

    return {"id": "img-1", "status": "active", "size": len(data), "checksum": hashlib.md5(data).hexdigest(),
            "os_hash_algo": algo, "os_hash_value": hashlib.new(algo, data).hexdigest()}


def copy_of(image: dict) -> dict:
    return {"task_id": "t", "attempt": 1, "kind": "copy", "image_id": "img-1", "region": "RegionA", "image": image}


def test_a_copy_an_earlier_attempt_made_is_reported_with_the_cascading_values():
    data = b"bytes" * 100
    cascading = digest_record(data, "sha512")
    client = FakeClient({"img-1": digest_record(data, "sha512")})
    result = task_mod._copy(copy_of(cascading), settings(), client, lambda d, t: None, lambda p: None)
    assert result == {"outcome": "done", "size": 500, "checksum": cascading["checksum"], "os_hash_algo": "sha512",
                      "os_hash_value": cascading["os_hash_value"]}


def test_a_copy_in_a_region_hashing_otherwise_is_read_back_and_reported_with_both_hashes():
    data = b"bytes" * 100
    cascading, regional = digest_record(data, "sha512"), digest_record(data, "sha256")
    client = FakeClient({"img-1": regional}, data)
    result = task_mod._copy(copy_of(cascading), settings(), client, lambda d, t: None, lambda p: None)
    assert result["os_hash_value"] == cascading["os_hash_value"]
    assert (result["region_hash_algo"], result["region_hash_value"]) == ("sha256", regional["os_hash_value"])


def test_a_zero_byte_image_is_refused_before_anything_is_created(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(task_mod.glance, "make_client", lambda endpoint: calls.append("client") or object())
    monkeypatch.setattr(task_mod.glance, "get_image", lambda *args: calls.append("get") or None)
    monkeypatch.setattr(task_mod.upload, "create", lambda *args: calls.append("create"))
    image = {"id": "img-1", "status": "active", "size": 0, "checksum": "d41d8cd98f00b204e9800998ecf8427e"}
    task = {"task_id": "t", "attempt": 1, "kind": "copy", "image_id": "img-1", "region": "RegionA", "image": image,
            "source": {"type": "sftp", "path": "/store/img-1"}}
    result = task_mod.run_task(task, settings(), lambda d, t: None)
    assert result["outcome"] == "failed" and result["retryable"] is False
    assert "has 0 bytes" in result["reason"] and "glance refuses a location of size 0" in result["reason"]
    assert "get" not in calls and "create" not in calls


def test_failure_reasons_carry_no_terminal_control_characters(monkeypatch):
    from glancesync.exceptions import GlanceError

    def hostile(task, settings, progress, phase, cancelled=None):
        raise GlanceError(endpoint="http://r", detail="409 <html>\x1b[2J\x1b]0;owned\x07\r\nbody\x9b</html>")

    monkeypatch.setattr(task_mod, "_dispatch", hostile)
    task = {"task_id": "t", "attempt": 1, "kind": "copy", "image_id": "img-1", "region": "RegionA", "image": {}}
    reason = task_mod.run_task(task, settings(), lambda d, t: None)["reason"]
    assert not any(c in reason for c in "\x1b\x07\r\n\x9b")
    assert "409 <html>\\x1b[2J\\x1b]0;owned\\x07  body\\x9b</html>" in reason


def test_the_snapshots_own_region_confirms_its_image_and_fetches_nothing():
    data = b"snap" * 100
    recorded = digest_record(data, "sha512")
    task = dict(copy_of(recorded), source={"type": "glance", "region": "RegionA"})
    result = task_mod._copy(task, settings(), FakeClient({"img-1": digest_record(data, "sha512")}),
                            lambda d, t: None, lambda p: None)
    assert result["outcome"] == "done" and result["os_hash_value"] == recorded["os_hash_value"]


def test_the_snapshots_own_region_without_its_image_fails_for_good_and_fetches_nothing(monkeypatch):
    import pytest

    data = b"snap" * 100
    task = dict(copy_of(digest_record(data, "sha512")), source={"type": "glance", "region": "RegionA"})
    monkeypatch.setattr(task_mod.pipeline, "copy", lambda *args: pytest.fail("nothing is fetched"))
    with pytest.raises(task_mod.VerificationError, match="not the recorded one") as caught:
        task_mod._copy(task, settings(), FakeClient({}), lambda d, t: None, lambda p: None)
    assert not caught.value.retryable
