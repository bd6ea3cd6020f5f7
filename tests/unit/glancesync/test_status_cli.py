"""glance-sync-status's command line: one line and exit 2 for anything wrong, full help on -h,
and --wait bounded per answer (--answer-timeout), not over a transfer, unless --timeout says so."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from glancesync import status
from tests.unit.fakeclock import FakeClock

from .test_status import FakeCoordinator, image, region, replies

IMAGE_ID = "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # main() returns every code: a SystemExit escaping it would fail the test.
    code = status.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("argv", "names"), [
    (["--timeout", "abc"], "--timeout"),
    (["--timeout", "-1"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--answer-timeout", "0"], "--answer-timeout"),
    (["--port", "70000"], "--port"),
    (["--port", "x"], "--port"),
    (["--host", "no such host!"], "--host"),
    (["--bogus"], "--bogus"),
    (["--wait"], "--wait"),
    (["--json=yes"], "--json"),
])
def test_a_bad_argument_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                               names: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("glance-sync-status: ") and err.count("\n") == 1 and names in err
    assert "usage:" not in err and "Traceback" not in err


def test_a_bad_argument_is_quoted_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--timeout", "\x1b]0;pwned\x07" + "9" * 500)
    assert code == 2 and "\x1b" not in err and "\x07" not in err and err.count("\n") == 1 and len(err) < 300


def test_help_prints_the_full_help_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("-h", "--help"):
        code, out, err = run(capsys, flag)
        assert code == 0 and err == ""
        assert out.startswith("usage: glance-sync-status")
        for word in ("--wait", "--timeout", "--answer-timeout", "--json", "--key-file", "image IMAGE_ID",
                     "exit codes:", "doc/status.md"):
            assert word in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("glance-sync-status ")


def test_options_and_view_in_any_order(capsys: pytest.CaptureFixture[str]) -> None:
    args = status.parse_args(["image", IMAGE_ID, "--json", "--port", "9"])
    assert args.view == ["image", IMAGE_ID] and args.json and args.port == 9
    assert status.parse_args(["--json", "image", IMAGE_ID]).view == ["image", IMAGE_ID]


def test_wait_with_a_view_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--port", str(closed_port()), "--wait", IMAGE_ID, "image", IMAGE_ID)
    assert code == 2 and "--wait takes no view" in err


# --- how long --wait waits ------------------------------------------------------------------------------


def test_wait_has_no_overall_limit_by_default() -> None:
    args = status.parse_args(["--wait", IMAGE_ID])
    assert args.timeout is None


def test_an_unlimited_wait_outlasts_a_long_transfer() -> None:
    clock = FakeClock()
    polls = int(3 * 3600 / status.POLL_INTERVAL)  # three hours of "transferring"
    moving = [image(RegionOne=region("transferring", n, polls)) for n in range(polls)]
    fetch = replies(*moving, image(RegionOne=region("synced", polls, polls)))
    code, why, _ = status.wait_for_image(fetch, None, clock=clock, sleep=clock.sleep)
    assert code == 0 and "synced in RegionOne" in why
    assert clock.now >= 3 * 3600
    # Every answer still had its own bound, not the (absent) overall one.
    assert set(fetch.seen) == {status.DEFAULT_ANSWER_TIMEOUT}


def test_each_answer_is_bounded_by_answer_timeout_within_a_long_wait() -> None:
    clock = FakeClock()
    fetch = replies(image(RegionOne=region("transferring", 1, 2)))
    code, why, _ = status.wait_for_image(fetch, 600.0, clock=clock, sleep=clock.sleep, answer_timeout=2.0)
    assert code == 1 and why.startswith("timed out after 600 s")
    assert max(fetch.seen) == 2.0


def test_no_answer_while_waiting_names_the_answer_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    code, _, err = run(capsys, "--port", str(port), "--wait", IMAGE_ID, "--timeout", "600",
                       "--answer-timeout", "0.3")
    assert code == 2
    assert err == f"glance-sync-status: no answer from coordinator at tcp://127.0.0.1:{port} within 0.3 s\n"


def test_a_view_takes_the_smaller_of_timeout_and_answer_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    assert run(capsys, "--port", str(port), "--answer-timeout", "0.2")[2].endswith("within 0.2 s\n")
    assert run(capsys, "--port", str(port), "--timeout", "0.3", "--answer-timeout", "9")[2].endswith(
        "within 0.3 s\n")


@pytest.fixture
def synced_on_third() -> Iterator[FakeCoordinator]:
    """A coordinator that reports the image transferring twice, then synced."""
    calls: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        calls.append(body)
        state = region("synced", 10, 10) if len(calls) >= 3 else region("transferring", 4, 10)
        return "status_reply", {"view": "image", "data": image(RegionOne=state)}

    fake = FakeCoordinator(answer)
    yield fake
    fake.close()


def test_main_wait_without_timeout_shows_progress_until_synced(synced_on_third: FakeCoordinator,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--host", "127.0.0.1", "--port", str(synced_on_third.port), "--wait", IMAGE_ID)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"waiting 0s for image {IMAGE_ID} (no time limit")
    assert "RegionOne: transferring 4 B/10 B (40%)" in lines
    assert lines[-1] == f"image {IMAGE_ID} is synced in RegionOne"
    assert len(synced_on_third.queries) == 3


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_main_on_a_terminal_draws_rich_tables_and_plain_text_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    moving = region("transferring", 4, 10, phase="uploading", rate_bytes_per_s=2048, eta_seconds=3)
    fake = FakeCoordinator(lambda body: ("status_reply", {"view": "image", "data": image(RegionOne=moving)}))
    try:
        shown = {}
        for name, out in (("tty", Terminal()), ("pipe", io.StringIO())):
            monkeypatch.setattr("sys.stdout", out)
            assert status.main(["--host", "127.0.0.1", "--port", str(fake.port), "image", IMAGE_ID]) == 0
            shown[name] = out.getvalue()
    finally:
        fake.close()
    assert "\x1b[1m" in shown["tty"] and "uploading" in shown["tty"] and "2.0 KiB/s" in shown["tty"]
    assert "\x1b" not in shown["pipe"]
    row = next(line for line in shown["pipe"].splitlines() if line.startswith("RegionOne"))
    assert row.split()[:3] == ["RegionOne", "transferring", "(uploading)"] and "2.0 KiB/s" in row
