"""The plugin's commands without the openstack shell: rows, formats, exit codes, glance-sync-manage runs."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from osc_lib import exceptions

from glancesync.osc import client, commands, plugin

NOW = 1_700_000_000.0
IMAGE = "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"
MIB = 1024 * 1024


def region(state: str, **extra: Any) -> dict[str, Any]:
    info = {"state": state, "task_kind": "copy", "task_id": "t1", "bytes_done": MIB, "bytes_total": 4 * MIB,
            "attempts": 1, "last_error": None, "agent_id": "agent-a", "updated_at": NOW - 5, "synced_at": None,
            "copy_registered": False, "metadata_applied": False}
    info.update(extra)
    return info


class FakeSync:
    """What SyncClient answers, without a coordinator."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.replies = replies
        self.closed = False

    def configure(self, options: argparse.Namespace) -> FakeSync:
        return self

    def query(self, view: str, image_id: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def wait(self, image_id: str, timeout: float | None, display: Any) -> tuple[int, str, dict[str, Any]]:
        data = self.query("image", image_id)
        display(data)
        return 1, f"image {image_id} failed in RegionOne: boom", data

    def close(self) -> None:
        self.closed = True


def run(cls: type, argv: list[str], sync: Any) -> tuple[int, str, str]:
    """Run one command as the shell would: parse, run, format (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    app = SimpleNamespace(stdout=out, stderr=err, client_manager=SimpleNamespace(glance_sync=sync), options=None)
    cmd = cls(app, None)
    parsed = cmd.get_parser("openstack image sync").parse_args(argv)
    code = cmd.run(parsed)
    return code, out.getvalue(), err.getvalue()


def test_the_extension_module_names_its_group_and_version() -> None:
    assert (plugin.API_NAME, plugin.API_VERSION_OPTION, plugin.DEFAULT_API_VERSION) == (
        "glance_sync", "os_glance_sync_api_version", "1")
    assert "1" in plugin.API_VERSIONS and isinstance(plugin.make_client(None), client.SyncClient)
    parsed = plugin.build_option_parser(argparse.ArgumentParser()).parse_args([])
    assert parsed.os_glance_sync_api_version == "1"


def test_show_keeps_the_replys_values_in_json_and_words_in_a_table() -> None:
    reply = {"image_id": IMAGE, "known": True, "now": NOW,
             "regions": {"RegionOne": region("transferring", phase="uploading", rate_bytes_per_s=2.0 * MIB, eta_seconds=90),
                         "RegionTwo": region("synced", bytes_done=4 * MIB, synced_at=NOW - 60,
                                             copy_registered=True, metadata_applied=True)}}
    code, out, _ = run(commands.ShowImageSync, [IMAGE, "--long", "-f", "json"], FakeSync([reply]))
    rows = {row["Region"]: row for row in json.loads(out)}
    assert code == 0
    assert rows["RegionOne"]["Phase"] == "uploading" and rows["RegionOne"]["Rate"] == 2.0 * MIB
    assert (rows["RegionOne"]["ETA"], rows["RegionOne"]["Bytes Done"]) == (90, MIB)
    assert rows["RegionTwo"]["Synced At"] == NOW - 60 and rows["RegionTwo"]["Copy Registered"] is True
    code, out, _ = run(commands.ShowImageSync, [IMAGE], FakeSync([reply]))
    line = next(li for li in out.splitlines() if "RegionOne" in li)
    assert "2.0 MiB/s" in line and "1m 30s" in line and "1.0 MiB" in line and "5s ago" in line


def test_show_of_an_image_the_coordinator_does_not_know_is_an_error() -> None:
    with pytest.raises(exceptions.CommandError, match="not known to the coordinator"):
        run(commands.ShowImageSync, [IMAGE], FakeSync([{"image_id": IMAGE, "known": False, "regions": {}}]))


def test_status_rows_carry_the_agents_and_warn_of_held_deletions() -> None:
    reply = {"coordinator": {"version": "0.1.0", "started_at": NOW - 10, "now": NOW},
             "deletions_held": {"images": 2, "confirmed": 0, "since": NOW - 30},
             "regions": {"RegionOne": {"queued": 1, "in_flight": 2, "synced": 3, "failed": 0, "agents": [
                 {"agent_id": "agent-a", "online": True, "last_heartbeat": NOW - 1, "capacity": 2, "credits": 1,
                  "tasks": []}]}}}
    code, out, err = run(commands.ShowSyncStatus, ["-f", "json"], FakeSync([reply]))
    assert code == 0 and "warning: deletions held: 2 image(s)" in err
    [row] = json.loads(out)
    assert (row["Region"], row["Queued"], row["In Flight"], row["Synced"]) == ("RegionOne", 1, 2, 3)
    assert row["Agents"][0]["agent_id"] == "agent-a"
    _, table, _ = run(commands.ShowSyncStatus, [], FakeSync([reply]))
    assert "agent-a (online, 1s ago)" in table


def test_wait_prints_the_last_rows_and_exits_1_when_a_region_failed() -> None:
    reply = {"image_id": IMAGE, "known": True, "now": NOW, "regions": {"RegionOne": region("failed")}}
    code, out, err = run(commands.WaitImageSync, [IMAGE, "-f", "json"], FakeSync([reply]))
    assert code == 1 and json.loads(out)[0]["State"] == "failed"
    assert err.splitlines()[-1] == f"image {IMAGE} failed in RegionOne: boom"


def test_a_region_name_with_control_characters_reaches_a_table_escaped() -> None:
    reply = {"image_id": IMAGE, "known": True, "now": NOW, "regions": {"Evil\x1b[2J": region("pending")}}
    sync = client.SyncClient()
    sync.query = lambda *a, **k: reply  # type: ignore[method-assign]
    sync.configure = lambda options: sync  # type: ignore[method-assign]
    _, out, _ = run(commands.ShowImageSync, [IMAGE], sync)
    assert "\x1b" not in out and "Evil\\x1b[2J" in out


def test_manage_commands_pass_on_glance_sync_manages_output_and_code(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "glance-sync-manage"
    tool.write_text(f"#!{sys.executable}\nimport sys\nprint(' '.join(sys.argv[1:]))\n"
                    "sys.stderr.write('said on stderr\\n')\nsys.exit(3)\n")
    tool.chmod(0o755)
    monkeypatch.setattr(client, "manage_tool", lambda: str(tool))
    conf = tmp_path / "sync.conf"
    conf.write_text("[DEFAULT]\n")
    sync = client.SyncClient()
    for cls, argv, expected in [(commands.ResyncImage, [IMAGE], f"resync {IMAGE}"),
                                (commands.CancelImageSync, [IMAGE], f"cancel {IMAGE}"),
                                (commands.ShowSyncPlan, [], "plan")]:
        code, out, err = run(cls, [*argv, "--sync-config", str(conf)], sync)
        assert (code, out, err) == (3, f"--config-file {conf} {expected}\n", "said on stderr\n")


def test_a_config_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(exceptions.CommandError, match="configuration error"):
        run(commands.ShowSyncStatus, ["--sync-config", str(tmp_path / "missing.conf")], client.SyncClient())
