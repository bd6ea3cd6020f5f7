"""glance-sync-agent's main(): refusing bad configuration, stopping on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest
import yaml

from agent import cmd

STORE = {
    "cascading": {"store": {"host": "127.0.0.1", "user": "u", "private_key_file": "/k",
                            "known_hosts_file": "/kh", "store_dir": "/store"}},
    "regions": {"RegionA": {"glance": {"url": "http://127.0.0.1:1"}, "work_dir": "/tmp/w"}},
}


def write_conf(tmp_path, region: str | None) -> str:
    store = tmp_path / "glance_store.yaml"
    store.write_text(yaml.safe_dump(STORE))
    lines = ["[DEFAULT]", f"glance_store_config = {store}", "[agent]", "coordinator_port = 1",
             "heartbeat_interval = 0.2"]
    if region:
        lines.append(f"region = {region}")
    conf = tmp_path / "agent.conf"
    conf.write_text("\n".join(lines) + "\n")
    return str(conf)


def test_missing_region_is_one_line_and_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cmd.main(["--config-file", write_conf(tmp_path, None)])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip() == "glance-sync-agent: [agent] region is required"


def test_region_not_in_store_yaml_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cmd.main(["--config-file", write_conf(tmp_path, "Nowhere")])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Nowhere" in err and "glance_store.yaml" in err and "RegionA" in err


def test_runs_until_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cmd", "--config-file", write_conf(tmp_path, "RegionA")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reconnecting = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "reconnecting" in line:
                reconnecting.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        # Running its loop: it lost the (absent) coordinator and scheduled a reconnect.
        assert reconnecting.wait(60), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "stopped" in out


def test_bad_yaml_is_one_line_and_exit_1(tmp_path, capsys):
    conf = write_conf(tmp_path, "RegionA")
    (tmp_path / "glance_store.yaml").write_text("regions: [\n")
    with pytest.raises(SystemExit) as info:
        cmd.main(["--config-file", conf])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "glance_store.yaml" in err
    assert err.count("\n") == 1 and err.startswith("glance-sync-agent: "), err


def test_unusable_work_dir_is_refused_at_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = dict(STORE, regions={"RegionA": {"glance": {"url": "http://127.0.0.1:1"},
                                             "work_dir": str(blocker / "work")}})
    conf = write_conf(tmp_path, "RegionA")
    (tmp_path / "glance_store.yaml").write_text(yaml.safe_dump(store))
    # A subprocess: an agent that does not refuse would run until killed.
    done = subprocess.run([sys.executable, "-m", "agent.cmd", "--config-file", conf], capture_output=True,
                          text=True, timeout=20)
    assert done.returncode == 1 and f"work_dir {blocker / 'work'}" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def _split_conf(tmp_path) -> str:
    """An agent host's files: glance_store.yaml naming both regions' files, only RegionA's present."""
    store = {"cascading": STORE["cascading"], "regions": {
        "RegionA": {"glance_file": "regions.d/RegionA.yaml", "work_dir": str(tmp_path / "work")},
        "RegionB": {"glance_file": "regions.d/RegionB.yaml", "work_dir": str(tmp_path / "work")},
    }}
    conf = write_conf(tmp_path, "RegionA")
    (tmp_path / "glance_store.yaml").write_text(yaml.safe_dump(store))
    (tmp_path / "regions.d").mkdir()
    return conf


def test_agent_loads_without_other_regions_files(tmp_path, monkeypatch):
    conf = _split_conf(tmp_path)
    (tmp_path / "regions.d" / "RegionA.yaml").write_text(yaml.safe_dump({"glance": {"url": "http://127.0.0.1:1"}}))
    reached: list[str] = []

    def stop_here(work_dir: str) -> None:
        reached.append(work_dir)
        raise SystemExit(0)

    monkeypatch.setattr(cmd, "_check_work_dir", stop_here)
    with pytest.raises(SystemExit) as info:
        cmd.main(["--config-file", conf])
    assert info.value.code == 0 and reached == [str(tmp_path / "work")]


def test_agent_without_its_own_regions_file_is_one_line(tmp_path, capsys):
    conf = _split_conf(tmp_path)
    with pytest.raises(SystemExit) as info:
        cmd.main(["--config-file", conf])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and len(err.splitlines()) == 1
    assert str(tmp_path / "regions.d" / "RegionA.yaml") in err and "regions.RegionA.glance_file" in err


# -- main()'s steps, one by one -------------------------------------------------------------


def _conf(tmp_path, *extra: str):
    from glancesync import config

    path = write_conf(tmp_path, "RegionA")
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in extra))
    return config.load(["--config-file", path], cmd.PROG, setup_logging=False)


def test_load_region_gives_the_region_its_store_view_and_work_dir(tmp_path):
    store = dict(STORE, regions={"RegionA": {"glance": {"url": "http://127.0.0.1:1"},
                                             "work_dir": str(tmp_path / "work")}})
    conf = _conf(tmp_path)
    (tmp_path / "glance_store.yaml").write_text(yaml.safe_dump(store))
    region, store_map, work_dir = cmd.load_region(conf)
    assert (region, work_dir) == ("RegionA", str(tmp_path / "work"))
    assert store_map.region("RegionA").glance.url == "http://127.0.0.1:1"
    assert (tmp_path / "work").is_dir()  # made at start, not at the first copy


def test_an_unusable_cache_dir_is_one_line_naming_the_option(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = dict(STORE, regions={"RegionA": {"glance": {"url": "http://127.0.0.1:1"},
                                             "work_dir": str(tmp_path / "work")}})
    conf = _conf(tmp_path, f"cache_dir = {blocker / 'cache'}")
    (tmp_path / "glance_store.yaml").write_text(yaml.safe_dump(store))
    with pytest.raises(SystemExit) as info:
        cmd.load_region(conf)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1
    assert err.startswith(f"glance-sync-agent: [agent] cache_dir {blocker / 'cache'}: "), err


def test_a_pool_that_cannot_start_is_one_line(tmp_path, monkeypatch, capsys):
    conf = _conf(tmp_path)

    def no_fork(*_args, **_kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(cmd, "build_pool", no_fork)
    with pytest.raises(SystemExit) as info:
        cmd.start_pool(conf, "RegionA", None, str(tmp_path), cmd.fetch_options(conf.agent))
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1
    assert "cannot start the worker pool: [Errno 24] Too many open files" in err


def test_a_service_that_refuses_its_configuration_shuts_the_pool_down(tmp_path, monkeypatch, capsys):
    from glancesync.exceptions import ConfigError

    class FakePool:
        stopped = False

        def shutdown(self):
            self.stopped = True

    def refuse(_conf, _pool):
        raise ConfigError(source="[curve] secret_key_file", detail="no such file:\n/etc/keys/agent.key_secret")

    monkeypatch.setattr(cmd, "AgentService", refuse)
    pool = FakePool()
    with pytest.raises(SystemExit) as info:
        cmd.start_service(_conf(tmp_path), pool)
    err = capsys.readouterr().err
    assert info.value.code == 1 and pool.stopped
    assert err.count("\n") == 1 and "secret_key_file" in err and "agent.key_secret" in err, err


class FakeService:
    """Records what run_until_stopped asks; ``drain_after`` steps once stopping, it says drained."""

    def __init__(self, stopping: list[int], signal_at: dict[int, int], drain_after: int | None = None,
                 fail_at: int | None = None) -> None:
        self.stopping, self.signal_at, self.drain_after, self.fail_at = stopping, signal_at, drain_after, fail_at
        self.steps = 0
        self.stops: list[float] = []
        self.shut = False

    def step(self, _now: float) -> None:
        self.steps += 1
        if self.steps in self.signal_at:
            self.stopping.append(self.signal_at[self.steps])
        if self.steps == self.fail_at:
            raise RuntimeError("one bad iteration")

    def stop(self, _now: float, grace: float) -> None:
        self.stops.append(grace)

    def drained(self, _now: float) -> bool:
        return self.drain_after is not None and len(self.stops) > self.drain_after

    def shutdown(self) -> None:
        self.shut = True


def test_the_first_signal_drains_with_the_grace_then_the_loop_ends():
    stopping: list[int] = []
    service = FakeService(stopping, {3: signal.SIGTERM}, drain_after=2)
    cmd.run_until_stopped(service, stopping, 7.5)
    assert service.steps == 5 and service.stops == [7.5, 7.5, 7.5] and service.shut


def test_a_second_signal_stops_at_once_without_waiting_for_the_drain():
    stopping: list[int] = []
    service = FakeService(stopping, {2: signal.SIGTERM, 4: signal.SIGINT})
    cmd.run_until_stopped(service, stopping, 30.0)
    assert service.steps == 4 and len(service.stops) == 2 and service.shut


def test_a_failing_iteration_is_logged_and_the_loop_goes_on(monkeypatch, caplog):
    stopping: list[int] = []
    service = FakeService(stopping, {2: signal.SIGTERM, 3: signal.SIGTERM}, fail_at=1)
    pauses: list[float] = []
    monkeypatch.setattr(cmd.time, "sleep", pauses.append)
    cmd.run_until_stopped(service, stopping, 1.0)
    assert service.steps == 3 and pauses == [1.0] and service.shut
    assert "agent loop iteration failed" in caplog.text
