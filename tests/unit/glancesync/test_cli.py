"""glancesync.cli: the operator tools' parser raises one-line usage errors; its small types."""

from __future__ import annotations

import argparse

import pytest

from glancesync import cli


def parser() -> cli.Parser:
    p = cli.Parser(prog="tool")
    cli.add_config_options(p)
    p.add_argument("--wait", type=cli.seconds(0.0, inclusive=False))
    return p


@pytest.mark.parametrize("argv", [["--nope"], ["--wait", "0"], ["--wait", "inf"], ["--wait", "nan"],
                                  ["--wait", "-3"], ["--wait"], ["extra"]])
def test_errors_are_one_line_usage_errors(argv: list[str]) -> None:
    with pytest.raises(cli.UsageError) as raised:
        parser().parse_args(argv)
    message = str(raised.value)
    assert "\n" not in message and message.endswith("(see 'tool --help')")


def test_seconds_takes_numbers_within_the_bound() -> None:
    assert cli.seconds()("0") == 0.0
    assert cli.seconds(0.0, inclusive=False)("0.25") == 0.25
    with pytest.raises(argparse.ArgumentTypeError, match="at least 0"):
        cli.seconds()("-0.1")


def test_config_options_reach_oslo_config_in_order() -> None:
    ns = parser().parse_args(["--config-file", "a.conf", "--config-dir", "d", "--config-file", "b.conf"])
    assert cli.config_argv(ns.config_file, ns.config_dir) == [
        "--config-file", "a.conf", "--config-file", "b.conf", "--config-dir", "d"]
    assert cli.config_argv(None, None) == []


def test_checked_names_what_it_expected() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected a port, not 'x'"):
        cli.checked(int, "a port")("x")
