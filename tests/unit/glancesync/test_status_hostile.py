"""glance-sync-status facing bad input: ids that are not glance ids, and replies that would drive a terminal."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from glancesync import status, untrusted

from .test_status import NOW, FakeCoordinator, image, region

IMAGE_ID = "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"
ESC = "\x1b"
# Clears the screen, sets the window title, and a C1 CSI: all must reach the terminal inert.
HOSTILE = f"boom{ESC}[2J{ESC}]0;owned\x07 \x9b31m\r\nsecond line \u202eevil"


def run_main(answer: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]], args: list[str]) -> tuple[int, Any]:
    fake = FakeCoordinator(answer)
    try:
        code = status.main(["--host", "127.0.0.1", "--port", str(fake.port), "--timeout", "5", *args])
    finally:
        fake.close()
    return code, fake.queries


def assert_inert(text: str) -> None:
    for char in (ESC, "\x07", "\x9b", "\r", "\u202e"):
        assert char not in text


@pytest.mark.parametrize("args", [["image", "../../../../etc/passwd"], ["--wait", f"../images/{IMAGE_ID}"],
                                  ["image", "img-1"], ["--wait", ESC + "[2J" + "x" * 5000]])
def test_an_id_that_is_not_a_glance_id_is_refused_before_asking(args: list[str], capsys) -> None:
    code, queries = run_main(lambda body: ("error", {"code": "x", "reason": "asked"}), args)
    assert code == 2 and queries == []
    err = capsys.readouterr().err
    assert "is not an image id" in err and len(err.splitlines()) == 1 and len(err) < 400
    assert_inert(err)


def test_a_hostile_last_error_is_shown_inert_in_the_image_view(capsys) -> None:
    data = image(**{f"Region{ESC}[31m": region("failed", error=HOSTILE, agent_id=f"a{ESC}[8m")})
    code, _ = run_main(lambda body: ("status_reply", {"view": "image", "data": data}), ["image", IMAGE_ID])
    out = capsys.readouterr().out
    assert code == 0
    assert_inert(out)
    assert "boom\\x1b[2J\\x1b]0;owned\\x07 \\x9b31m" in out and "Region\\x1b[31m" in out


def test_a_hostile_last_error_is_shown_inert_when_wait_fails(capsys) -> None:
    data = image(RegionOne=region("failed", error=HOSTILE))
    code, _ = run_main(lambda body: ("status_reply", {"view": "image", "data": data}), ["--wait", IMAGE_ID])
    err = capsys.readouterr().err
    assert code == 1 and "boom\\x1b[2J" in err
    assert_inert(err)
    assert len(err.splitlines()) == 1


def test_hostile_names_are_shown_inert_in_the_summary(capsys) -> None:
    agents = [{"agent_id": f"agent{ESC}]0;x\x07", "online": True, "last_heartbeat": NOW, "capacity": 1,
               "credits": 0, "tasks": []}]
    data = {"coordinator": {"version": f"1{ESC}[5m", "started_at": NOW, "now": NOW},
            "regions": {f"R{ESC}[2J": {"queued": 0, "in_flight": 0, "synced": 0, "failed": 0, "agents": agents}}}
    code, _ = run_main(lambda body: ("status_reply", {"view": "summary", "data": data}), [])
    out = capsys.readouterr().out
    assert code == 0 and "R\\x1b[2J" in out
    assert_inert(out)


def test_a_coordinator_error_reason_is_shown_inert(capsys) -> None:
    code, _ = run_main(lambda body: ("error", {"code": "bad", "reason": HOSTILE}), ["image", IMAGE_ID])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert_inert(err)


def test_json_output_keeps_the_data_and_json_escapes_it(capsys) -> None:
    data = image(RegionOne=region("failed", error=HOSTILE))
    code, _ = run_main(lambda body: ("status_reply", {"view": "image", "data": data}), ["--json", "image", IMAGE_ID])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["regions"]["RegionOne"]["last_error"] == HOSTILE
    assert_inert(out)


@pytest.mark.parametrize("data", [
    {"regions": ["not", "a", "map"], "known": True},
    {"regions": {"R": "x"}, "known": True},
    {"known": True, "regions": {"R": {"bytes_done": "x", "bytes_total": 5}}},
])
def test_a_reply_of_an_unexpected_shape_is_one_line(data: dict[str, Any], capsys) -> None:
    code, _ = run_main(lambda body: ("status_reply", {"view": "image", "data": data}), ["image", IMAGE_ID])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_printable_keeps_ordinary_text_and_escapes_controls() -> None:
    assert untrusted.printable("RegionOne: ünïcode ok") == "RegionOne: ünïcode ok"
    assert untrusted.printable("a\tb\nc\x00d\x7fe\x85f") == "a b c\\x00d\\x7fe f"
    assert untrusted.printable_data({"k\x1b": ["v\x1b", 3]}) == {"k\\x1b": ["v\\x1b", 3]}
