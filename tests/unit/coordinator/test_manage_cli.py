"""glance-sync-manage's command line: real sub-commands, a --help for each, one line and exit 2 when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator import manage

from .conftest import IMAGE_ID, make_conf

COMMANDS = ("db_sync", "db_version", "keygen", "gensecret", "resync", "cancel", "sync", "purge", "reconcile")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = manage.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _listed(out: str) -> dict[str, str]:
    """command -> its one line of help, from the 'commands:' block of the help."""
    block = out.split("commands:", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    return {line.split()[0]: line for line in lines if line.split() and line.split()[0] in COMMANDS}


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
def test_help_and_no_arguments_list_every_command_one_line_each(capsys: pytest.CaptureFixture[str],
                                                                argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == (2 if not argv else 0)
    assert "a command is required" not in out + err
    listed = _listed(out)
    assert sorted(listed) == sorted(COMMANDS)
    for name, line in listed.items():
        assert len(line.split()) > 3, f"{name} has no summary"


@pytest.mark.parametrize(("command", "words"), [
    ("db_sync", ["--config-file"]),
    ("db_version", ["--config-file"]),
    ("keygen", ["--dir", "--name", "--role", "--region", "--allowed-dir"]),
    ("gensecret", ["--file"]),
    ("resync", ["IMAGE_ID"]),
    ("purge", ["--days"]),
    ("reconcile", ["--confirm-deletes"]),
])
def test_every_command_has_its_own_help(capsys: pytest.CaptureFixture[str], command: str,
                                        words: list[str]) -> None:
    code, out, err = run(capsys, command, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: glance-sync-manage {command}")
    for word in words:
        assert word in out


@pytest.mark.parametrize(("argv", "says"), [
    (["bogus"], "invalid choice"),
    (["--frobnicate", "db_sync"], "--frobnicate"),
    (["keygen"], "--dir"),
    (["keygen", "--dir", "d", "--name", "n", "--role", "king"], "--role"),
    (["purge", "--days", "abc"], "--days"),
    (["resync"], "IMAGE_ID"),
    (["resync", IMAGE_ID, IMAGE_ID], "unrecognized"),
    (["reconcile", "--confirm-deletes=yes"], "--confirm-deletes"),
    (["gensecret"], "--file"),
    (["db_sync", "--config-file"], "--config-file"),
])
def test_a_bad_argument_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                               says: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("glance-sync-manage: ") and err.count("\n") == 1 and says in err
    assert "usage:" not in err


def test_a_typed_control_character_is_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "\x1b]0;pwned\x07")
    assert code == 2 and "\x1b" not in err and err.count("\n") == 1


def test_config_file_before_or_after_the_command(tmp_path: Path, db_url: str, store_yaml: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    make_conf(tmp_path, db_url, store_yaml)
    conf = str(tmp_path / "coordinator.conf")
    assert run(capsys, "--config-file", conf, "db_sync")[0] == 0
    assert run(capsys, "db_version", "--config-file", conf)[0] == 0
    code, out, _ = run(capsys, "purge", "--config-file", conf, "--days", "3")
    assert code == 0 and "older than 3 day(s)" in out
    code, out, _ = run(capsys, "reconcile", "--config-file", conf)
    assert code == 0 and out == "no deletions held\n"


def test_a_missing_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "db_version", "--config-file", str(tmp_path / "none.conf"))
    assert code == 2 and err.count("\n") == 1 and "none.conf" in err


def test_plan_refuses_a_bad_image_id_in_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        manage.main(["plan", "../etc"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not an image id" in err


@pytest.mark.parametrize("argv, words", [
    (["resync"], "resync: IMAGE_ID or --failed is required"),
    (["resync", "--failed", IMAGE_ID], "resync: either IMAGE_ID, or --failed"),
    (["resync", IMAGE_ID, "--region", "RegionOne"], "resync: either IMAGE_ID, or --failed"),
    (["cancel", "not-an-id"], "cancel: 'not-an-id' is not an image id"),
    (["sync", IMAGE_ID, "--regions", " , "], "sync: --regions names no region"),
    (["sync", IMAGE_ID], "the following arguments are required: --regions"),
])
def test_operator_commands_refuse_bad_arguments_with_one_line(capsys: pytest.CaptureFixture[str], argv,
                                                              words) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and words in err and err.count("\n") == 1 and out == ""
