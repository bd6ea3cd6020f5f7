"""glance-sync-status: rendering, the --wait logic, and real runs of main() against a fake coordinator."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from glancesync import protocol, status, status_live, status_render
from tests.unit.fakeclock import FakeClock

NOW = 1_700_000_000.0
MIB = 1024 * 1024

SUMMARY = {
    "coordinator": {"version": "0.1.0", "started_at": NOW - 3725},
    "regions": {
        "RegionTwo": {"queued": 0, "in_flight": 0, "synced": 4, "failed": 0, "agents": []},
        "RegionOne": {
            "queued": 7,
            "in_flight": 2,
            "synced": 12,
            "failed": 1,
            "agents": [
                {"agent_id": "agent-b", "online": False, "last_heartbeat": NOW - 300.4, "capacity": 2,
                 "credits": 0, "tasks": []},
                {"agent_id": "agent-a", "online": True, "last_heartbeat": NOW - 2, "capacity": 4,
                 "credits": 2, "tasks": ["t1", "t2"]},
            ],
        },
    },
}


def region(state: str, done: int = 0, total: int = 0, error: str | None = None, **extra: Any) -> dict[str, Any]:
    info = {"state": state, "task_kind": "copy", "task_id": "t1", "bytes_done": done, "bytes_total": total,
            "attempts": 1, "last_error": error, "agent_id": "agent-a", "updated_at": NOW - 5, "synced_at": None}
    info.update(extra)
    return info


def image(known: bool = True, **regions: dict[str, Any]) -> dict[str, Any]:
    return {"image_id": "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10", "known": known, "regions": regions}


# --- rendering -------------------------------------------------------------------------------------------


def test_image_view_shows_phase_rate_and_eta_when_the_coordinator_reports_them() -> None:
    moving = region("transferring", 3 * MIB, 4 * MIB, phase="uploading", rate_bytes_per_s=1.5 * MIB, eta_seconds=65.2)
    lines = status_render.render_image(image(RegionOne=moving, RegionTwo=region("synced", phase=None)),
                                       NOW).splitlines()
    assert lines[2].split()[:5] == ["REGION", "STATE", "BYTES", "RATE", "ETA"]
    one = next(line for line in lines if line.startswith("RegionOne"))
    assert "uploading" in one and "1.5 MiB/s" in one and "1m 5s" in one
    # Without them (an older coordinator) the columns are not there at all.
    plain = status_render.render_image(image(RegionOne=region("transferring", 1, 2)), NOW)
    assert "PHASE" not in plain and "RATE" not in plain


def test_summary_view() -> None:
    text = status_render.render_summary(SUMMARY, NOW)
    lines = text.splitlines()
    assert lines[0].startswith("coordinator 0.1.0, up 1h 2m")
    one = next(line for line in lines if line.startswith("RegionOne"))
    assert one.split() == ["RegionOne", "7", "2", "12", "1", "1/2", "online"]
    two = next(line for line in lines if line.startswith("RegionTwo"))
    assert two.split() == ["RegionTwo", "0", "0", "4", "0", "0/0", "online"]
    assert "RegionTwo: no agent has connected" in text
    agent_a = next(line for line in lines if "agent-a" in line).split()
    assert agent_a == ["agent-a", "online", "2s", "ago", "4", "2", "2"]
    agent_b = next(line for line in lines if "agent-b" in line).split()
    assert agent_b == ["agent-b", "offline", "300s", "ago", "2", "0", "0"]
    # Regions sorted; agents of a region sorted by id.
    assert text.index("RegionOne") < text.index("RegionTwo")
    assert text.index("agent-a") < text.index("agent-b")


def test_summary_names_the_coordinators_role_and_lease() -> None:
    single = dict(SUMMARY, coordinator={"version": "0.1.0", "started_at": NOW - 5, "role": "single"})
    assert status_render.render_summary(single, NOW).splitlines()[1] == (
        "role: single coordinator (no active/passive pair)")
    lease = {"holder": "ctl-a-1f2e", "generation": 7, "expires": NOW + 12}
    active = dict(SUMMARY, coordinator={"version": "0.1.0", "started_at": NOW - 5, "role": "active", "lease": lease})
    assert status_render.render_summary(active, NOW).splitlines()[1] == (
        "role: active member of a pair, lease held by ctl-a-1f2e (generation 7), expires in 12s")
    # An older coordinator says nothing of a role: no line for it.
    assert not any(line.startswith("role:") for line in status_render.render_summary(SUMMARY, NOW).splitlines())


def test_summary_without_regions() -> None:
    text = status_render.render_summary({"coordinator": {"version": "0.1.0", "started_at": NOW}, "regions": {}}, NOW)
    assert "no regions" in text


def test_image_view() -> None:
    data = image(
        RegionOne=region("transferring", 25 * MIB, 100 * MIB),
        RegionTwo=region("failed", 0, 100 * MIB, error="sftp:\n  connection reset", attempts=6),
        RegionThree=region("synced", 100 * MIB, 100 * MIB, agent_id=None),
    )
    lines = status_render.render_image(data, NOW).splitlines()
    assert lines[0] == "image 3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"
    header = lines[2].split()
    # No region reports a rate or an ETA here: no such columns.
    assert header == ["REGION", "STATE", "BYTES", "ATTEMPTS", "AGENT", "UPDATED", "LAST", "ERROR"]
    one = next(line for line in lines if line.startswith("RegionOne"))
    assert "transferring" in one and "25.0 MiB/100.0 MiB (25%)" in one and "agent-a" in one and "5s ago" in one
    two = next(line for line in lines if line.startswith("RegionTwo"))
    assert "failed" in two and " 6 " in two and two.endswith("sftp: connection reset")
    three = next(line for line in lines if line.startswith("RegionThree"))
    assert "100.0 MiB/100.0 MiB (100%)" in three


def test_image_view_and_wait_lines_show_phase_rate_eta_and_what_a_requeued_pair_waits_for() -> None:
    data = image(
        RegionOne=region("transferring", 25 * MIB, 100 * MIB, phase="uploading", rate_bytes_per_s=5 * MIB,
                         eta_seconds=75.0),
        RegionTwo=region("pending", 0, 100 * MIB, phase="waiting", retry_at=NOW + 30, error="connection reset"),
        RegionThree=region("pending", 0, 100 * MIB, phase="queued"),
    )
    lines = status_render.render_image(data, NOW).splitlines()
    one = next(line for line in lines if line.startswith("RegionOne"))
    assert "transferring (uploading)" in one and "5.0 MiB/s" in one and "1m 15s" in one
    two = next(line for line in lines if line.startswith("RegionTwo"))
    stamp = time.strftime("%H:%M:%S", time.gmtime(NOW + 30))
    assert f"pending (waiting: retry at {stamp} UTC)" in two
    regions = data["regions"]
    assert status_render.region_progress_line("RegionOne", regions["RegionOne"]) == (
        "RegionOne: transferring (uploading) 25.0 MiB/100.0 MiB (25%) at 5.0 MiB/s, ETA 1m 15s")
    # A requeued pair says what it waits for, never the bytes of the attempt that failed.
    assert status_render.region_progress_line("RegionTwo", regions["RegionTwo"]) == (
        f"RegionTwo: pending (waiting: retry at {stamp} UTC)")
    assert status_render.region_progress_line("RegionThree", regions["RegionThree"]) == "RegionThree: pending (queued)"


def test_image_view_names_the_fact_a_failed_region_misses() -> None:
    failed = {**region("failed", 0, 100 * MIB, error="metadata applied, but no registered copy"),
              "copy_registered": False, "metadata_applied": True}
    lines = status_render.render_image(image(RegionOne=failed), NOW).splitlines()
    row = next(line for line in lines if line.startswith("RegionOne"))
    assert "failed (missing: copy registered)" in row


def test_image_view_unknown() -> None:
    assert status_render.render_image(image(known=False), NOW) == "image 3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10: not known to the coordinator\n"


@pytest.mark.parametrize(
    ("num", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * MIB, "5.0 MiB"), (3 * 1024**4, "3.0 TiB")]
)
def test_size(num: int, text: str) -> None:
    assert status_render.size(num) == text


def test_progress_and_percent() -> None:
    assert status_render.progress(0, 0) == "-"
    assert status_render.progress(50, 0) == "50 B/0 B (-)"
    assert status_render.percent(1, 3) == "33%"
    assert status_render.age(None, NOW) == "never"


# --- the --wait logic ------------------------------------------------------------------------------------


def replies(*datas: dict[str, Any]) -> Any:
    """A fake query function answering each poll with the next reply, then repeating the last."""
    seen: list[float] = []

    def fetch(query_timeout: float) -> dict[str, Any]:
        seen.append(query_timeout)
        return datas[min(len(seen) - 1, len(datas) - 1)]

    fetch.seen = seen  # type: ignore[attr-defined]
    return fetch


def test_wait_exits_0_when_every_region_is_synced() -> None:
    clock = FakeClock()
    fetch = replies(
        image(known=False),
        image(RegionOne=region("pending"), RegionTwo=region("pending")),
        image(RegionOne=region("transferring", 5, 10), RegionTwo=region("synced", 10, 10)),
        image(RegionOne=region("synced", 10, 10), RegionTwo=region("synced", 10, 10)),
    )
    code, why, data = status.wait_for_image(fetch, 30.0, clock=clock, sleep=clock.sleep)
    assert code == 0
    assert "RegionOne, RegionTwo" in why
    assert len(fetch.seen) == 4
    assert clock.sleeps == [status.POLL_INTERVAL] * 3


def test_wait_exits_1_naming_the_failed_region() -> None:
    clock = FakeClock()
    fetch = replies(
        image(RegionOne=region("transferring", 5, 10), RegionTwo=region("pending")),
        image(RegionOne=region("synced", 10, 10), RegionTwo=region("failed", error="checksum mismatch")),
    )
    code, why, _ = status.wait_for_image(fetch, 30.0, clock=clock, sleep=clock.sleep)
    assert code == 1
    assert "RegionTwo" in why and "checksum mismatch" in why and "RegionOne" not in why


def test_wait_times_out_naming_the_regions_behind() -> None:
    clock = FakeClock()
    fetch = replies(image(RegionOne=region("synced", 10, 10), RegionTwo=region("transferring", 4 * MIB, 8 * MIB)))
    code, why, _ = status.wait_for_image(fetch, 3.0, clock=clock, sleep=clock.sleep)
    assert code == 1
    assert why.startswith("timed out after 3 s")
    assert "RegionTwo: transferring 4.0 MiB/8.0 MiB (50%)" in why and "RegionOne" not in why
    assert clock.now == pytest.approx(3.0)
    assert "\n" not in why


def test_wait_times_out_on_an_image_never_known() -> None:
    clock = FakeClock()
    code, why, _ = status.wait_for_image(replies(image(known=False)), 1.0, clock=clock, sleep=clock.sleep)
    assert code == 1 and "not known" in why


def test_wait_exits_0_for_a_planned_image_with_nowhere_to_go() -> None:
    clock = FakeClock()
    nowhere = {**image(), "planned": True, "settled": True}
    code, why, _ = status.wait_for_image(replies(image(), nowhere), 10.0, clock=clock, sleep=clock.sleep)
    assert code == 0 and "no region" in why


def test_wait_keeps_waiting_for_an_image_planned_but_not_settled() -> None:
    # Created and not uploaded yet (or its import still runs): its created event asks for nothing.
    clock = FakeClock()
    created = {**image(), "planned": True, "settled": False}
    code, why, _ = status.wait_for_image(replies(created), 2.0, clock=clock, sleep=clock.sleep)
    assert code == 1 and "timed out" in why and "not active" in why
    uploaded = {**image(), "planned": True, "settled": True}
    code, _why, _ = status.wait_for_image(replies(created, uploaded), 10.0, clock=clock, sleep=clock.sleep)
    assert code == 0


def test_wait_keeps_waiting_for_an_image_not_planned_yet() -> None:
    clock = FakeClock()
    code, why, _ = status.wait_for_image(replies({**image(), "planned": False}), 2.0, clock=clock, sleep=clock.sleep)
    assert code == 1 and "timed out" in why


def test_wait_exits_0_once_deleted_everywhere() -> None:
    clock = FakeClock()
    fetch = replies(image(RegionOne=region("deleting"), RegionTwo=region("deleted")),
                    image(RegionOne=region("deleted"), RegionTwo=region("deleted")))
    code, why, _ = status.wait_for_image(fetch, 10.0, clock=clock, sleep=clock.sleep)
    assert code == 0 and "deleted in RegionOne, RegionTwo" in why


def test_wait_gives_each_query_at_least_a_second() -> None:
    clock = FakeClock()
    fetch = replies(image(RegionOne=region("pending")))
    status.wait_for_image(fetch, 2.0, clock=clock, sleep=clock.sleep)
    assert fetch.seen[0] == 2.0 and min(fetch.seen) == status.MIN_QUERY_TIMEOUT


def test_display_without_tty_prints_state_changes_only() -> None:
    out = io.StringIO()
    clock = FakeClock()
    display = status_live.WaitDisplay(out, tty=False, clock=clock)
    display.show(image(RegionOne=region("pending")))
    display.show(image(RegionOne=region("pending")))
    display.show(image(RegionOne=region("transferring", 1, 2)))
    display.show(image(RegionOne=region("transferring", 2, 2)))
    assert out.getvalue().splitlines() == [
        "waiting 0s for image 3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10 (no time limit; Ctrl-C stops waiting)",
        "RegionOne: pending", "RegionOne: transferring 1 B/2 B (50%)"]


def test_display_without_tty_shows_a_long_transfer_moving() -> None:
    out = io.StringIO()
    clock = FakeClock()
    display = status_live.WaitDisplay(out, tty=False, limit=7200.0, clock=clock)
    display.show(image(RegionOne=region("transferring", 1 * MIB, 100 * MIB)))
    clock.now = status_live.PROGRESS_EVERY - 1
    display.show(image(RegionOne=region("transferring", 2 * MIB, 100 * MIB)))
    clock.now = status_live.PROGRESS_EVERY
    display.show(image(RegionOne=region("transferring", 60 * MIB, 100 * MIB)))
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("(at most 7200 s; Ctrl-C stops waiting)")
    assert lines[1:] == ["RegionOne: transferring 1.0 MiB/100.0 MiB (1%)",
                         "RegionOne: transferring 60.0 MiB/100.0 MiB (60%)"]


def test_display_on_tty_redraws_a_live_table_with_a_header_and_one_row_per_region() -> None:
    out = io.StringIO()
    clock = FakeClock()
    display = status_live.WaitDisplay(out, tty=True, clock=clock)
    display.show(image(RegionOne=region("pending"), RegionTwo=region("pending")))
    clock.now = 75.0
    display.show(image(RegionOne=region("transferring", 1, 4, phase="uploading", rate_bytes_per_s=2 * MIB, eta_seconds=90),
                       RegionTwo=region("pending")))
    display.close()
    text = out.getvalue()
    assert "\x1b[" in text  # drawn for a terminal, and redrawn in place
    assert "waiting 1m 15s for image 3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10 (no time limit" in text
    last = text[text.rindex("waiting 1m 15s"):]
    row = next(line for line in last.splitlines() if "RegionOne" in line)
    assert "uploading" in row and "1 B/4 B (25%)" in row
    assert "2.0 MiB/s" in row and "1m 30s" in row


def test_display_without_tty_prints_a_phase_change_with_rate_and_eta() -> None:
    out = io.StringIO()
    display = status_live.WaitDisplay(out, tty=False, clock=FakeClock())
    display.show(image(RegionOne=region("transferring", 1 * MIB, 4 * MIB, phase="fetching")))
    display.show(image(RegionOne=region("transferring", 4 * MIB, 4 * MIB, phase="uploading", rate_bytes_per_s=MIB, eta_seconds=3)))
    assert out.getvalue().splitlines()[1:] == [
        "RegionOne: transferring (fetching) 1.0 MiB/4.0 MiB (25%)",
        "RegionOne: transferring (uploading) 4.0 MiB/4.0 MiB (100%) at 1.0 MiB/s, ETA 3s"]


def test_view_on_a_terminal_is_a_rich_table_that_interprets_no_markup() -> None:
    out = io.StringIO()
    data = image(**{"[bold]Region": region("transferring", MIB, 4 * MIB, phase="uploading", rate_bytes_per_s=MIB, eta_seconds=3)})
    status_live.print_view(out, True, "image", data, NOW)
    text = out.getvalue()
    assert "[bold]Region" in text and "(uploading)" in text and "1.0 MiB/s" in text


# --- real runs of main() ---------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_answer_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    started = time.monotonic()
    code = status.main(["--host", "127.0.0.1", "--port", str(port), "--timeout", "0.5"])
    assert code == 2
    assert 0.4 < time.monotonic() - started < 3.0
    err = capsys.readouterr().err
    assert err == f"glance-sync-status: no answer from coordinator at tcp://127.0.0.1:{port} within 0.5 s\n"


def test_unknown_view_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(["--port", str(closed_port()), "images"]) == 2
    assert "unknown view" in capsys.readouterr().err


def test_image_view_without_id_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(["--port", str(closed_port()), "image"]) == 2
    assert "'image' needs an image id" in capsys.readouterr().err


class FakeCoordinator:
    """A ROUTER on loopback that answers each status_query from ``answer(body)``."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.queries: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            identity, frame = self.sock.recv_multipart()
            msg = protocol.decode(frame)
            self.queries.append(msg.body)
            msg_type, body = self.answer(msg.body)
            self.sock.send_multipart([identity, protocol.encode(msg_type, body)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()
        self.context.term()


@pytest.fixture
def coordinator(request: pytest.FixtureRequest) -> Iterator[FakeCoordinator]:
    fake = FakeCoordinator(request.param)
    yield fake
    fake.close()


def _answers(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if body["view"] == "summary":
        return "status_reply", {"view": "summary", "data": SUMMARY}
    if body["image_id"] == "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10":
        return "status_reply", {"view": "image", "data": image(RegionOne=region("synced", 10, 10))}
    return "error", {"code": "not_found", "reason": f"no image {body['image_id']}"}


@pytest.mark.parametrize("coordinator", [_answers], indirect=True)
def test_main_summary_image_json_and_error(coordinator: FakeCoordinator, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--host", "127.0.0.1", "--port", str(coordinator.port), "--timeout", "5"]
    assert status.main(base) == 0
    assert "RegionOne" in capsys.readouterr().out
    assert status.main(base + ["image", "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"]) == 0
    assert "RegionOne  synced" in capsys.readouterr().out
    assert status.main(base + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == SUMMARY
    assert status.main(base + ["--json", "image", "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"]) == 0
    assert json.loads(capsys.readouterr().out)["regions"]["RegionOne"]["state"] == "synced"
    assert status.main(base + ["image", "00000000-0000-4000-8000-000000000404"]) == 2
    assert capsys.readouterr().err == "glance-sync-status: coordinator error not_found: no image 00000000-0000-4000-8000-000000000404\n"
    assert status.main(base + ["--wait", "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"]) == 0
    assert "synced in RegionOne" in capsys.readouterr().out
    assert coordinator.queries[:2] == [{"view": "summary", "image_id": None}, {"view": "image", "image_id": "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"}]


@pytest.mark.parametrize(
    "coordinator",
    [lambda body: ("status_reply", {"view": "image", "data": image(RegionOne=region("failed", error="boom"))})],
    indirect=True,
)
def test_main_wait_failed_exit_1(coordinator: FakeCoordinator, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--host", "127.0.0.1", "--port", str(coordinator.port), "--wait", "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10", "--timeout", "5"]
    assert status.main(argv) == 1
    err = capsys.readouterr().err
    assert err == "glance-sync-status: image 3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10 failed in RegionOne: boom\n"


def test_config_file_supplies_host_and_port(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    conf_file = tmp_path / "glance-sync.conf"
    conf_file.write_text(f"[DEFAULT]\nsync_server_host = 127.0.0.1\nsync_server_port = {port}\n")
    assert status.main(["--config-file", str(conf_file), "--timeout", "0.2"]) == 2
    assert f"tcp://127.0.0.1:{port} within 0.2 s" in capsys.readouterr().err
    other = closed_port()
    assert status.main(["--config-file", str(conf_file), "--port", str(other), "--timeout", "0.2"]) == 2
    assert f"tcp://127.0.0.1:{other} within" in capsys.readouterr().err


@pytest.mark.parametrize("coordinator", [_answers], indirect=True)
def test_a_pair_in_sync_servers_is_asked_in_turn_until_one_answers(
        coordinator: FakeCoordinator, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    passive = closed_port()  # a pair's passive coordinator binds nothing: no answer there
    conf_file = tmp_path / "glance-sync.conf"
    conf_file.write_text(f"[DEFAULT]\nsync_servers = 127.0.0.1:{passive},127.0.0.1:{coordinator.port}\n")
    assert status.main(["--config-file", str(conf_file), "--timeout", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == SUMMARY
    conf_file.write_text(f"[DEFAULT]\nsync_servers = 127.0.0.1:{passive},127.0.0.1:{closed_port()}\n")
    assert status.main(["--config-file", str(conf_file), "--timeout", "0.2"]) == 2
    assert "no answer from coordinator" in capsys.readouterr().err  # every one tried, one line


def test_missing_curve_key_is_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    conf_file = tmp_path / "glance-sync.conf"
    conf_file.write_text(f"[curve]\nenabled = true\nsecret_key_file = {tmp_path}/none.key_secret\n")
    assert status.main(["--config-file", str(conf_file), "--port", str(closed_port())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.key_secret" in err


def test_bad_value_in_config_file_is_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    conf_file = tmp_path / "glance-sync.conf"
    conf_file.write_text("[DEFAULT]\nsync_server_port = abc\n")
    assert status.main(["--config-file", str(conf_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glance-sync-status: configuration error:") and err.count("\n") == 1
    assert "sync_server_port" in err


def test_ages_are_measured_against_the_coordinators_clock() -> None:
    assert status.coordinator_now({"coordinator": {"now": 123.0}}) == 123.0
    assert status.coordinator_now({"now": 456.0, "regions": {}}) == 456.0
    before = time.time()
    assert status.coordinator_now({"coordinator": {}}) >= before  # an older coordinator: our clock


def test_summary_names_held_deletions() -> None:
    base = {"coordinator": {"version": "0.1.0", "started_at": NOW}, "regions": {}}
    assert "deletions held" not in status_render.render_summary(
        {**base, "deletions_held": {"images": 0, "confirmed": 0, "since": None}}, NOW)
    held = status_render.render_summary({**base, "deletions_held": {"images": 3, "confirmed": 0,
                                                                     "since": NOW - 60}}, NOW)
    line = next(line for line in held.splitlines() if line.startswith("deletions held"))
    assert line.startswith("deletions held: 3 image(s) since 60s ago") and "glance-sync-manage reconcile" in line
    confirmed = status_render.render_summary({**base, "deletions_held": {"images": 3, "confirmed": 3,
                                                                          "since": NOW - 60}}, NOW)
    assert "confirmed" in next(line for line in confirmed.splitlines() if line.startswith("deletions held"))


def test_wait_never_succeeds_for_a_region_name_that_is_no_region() -> None:
    clock = FakeClock()
    why_not = "region 'regiontwo' is not known; did you mean 'RegionTwo'? (region names are case-sensitive)"
    synced = {**image(RegionOne=region("synced", 10, 10)), "targeting_error": why_not}
    code, why, _ = status.wait_for_image(replies(synced), 10.0, clock=clock, sleep=clock.sleep)
    assert code == 1 and "did you mean 'RegionTwo'" in why and clock.now == 0.0
    nowhere = {**image(), "planned": True, "settled": True, "targeting_error": why_not}
    code, why, _ = status.wait_for_image(replies(nowhere), 10.0, clock=clock, sleep=clock.sleep)
    assert code == 1 and "synced to no region" in why
    assert f"targeting: {why_not}" in status_render.render_image(synced, NOW)


def test_wait_reports_a_cancelled_region() -> None:
    clock = FakeClock()
    data = image(RegionOne=region("synced", 10, 10), RegionTwo=region("cancelled", error="cancelled by an operator"))
    code, why, _ = status.wait_for_image(replies(data), 10.0, clock=clock, sleep=clock.sleep)
    assert code == 1 and "RegionTwo: cancelled: cancelled by an operator" in why


def test_summary_shows_the_strategy_in_force() -> None:
    data = {"coordinator": {"version": "0.1.0", "started_at": NOW, "sync_strategy": "ON_DEMAND (only what "
                            "glance-sync-manage sync asks for)"}, "regions": {}}
    assert "sync_strategy: ON_DEMAND" in status_render.render_summary(data, NOW)
