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
