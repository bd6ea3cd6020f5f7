"""Command lines of the operator tools (``glance-sync-status``, ``glance-sync-manage``).

The tools promise one line on stderr and exit code 2 for any bad argument, so that
a script tells a usage error from a failed check by the code alone.  Neither
argparse nor oslo.config's parser keeps that promise on its own: both print their
whole usage before the error, and oslo.config ends with exit code 1 on a value of
the wrong type.  So the tools parse their command line with ``Parser`` (argparse,
whose errors raise ``UsageError`` instead of printing) and hand only
``--config-file``/``--config-dir`` to oslo.config, which then reads the files.
``-h``/``--help`` still prints the full help and exits 0.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from glancesync import untrusted


class UsageError(Exception):
    """A bad command line: the tool prints this one line and exits with code 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError; help keeps its layout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # The message may quote what was typed: escaped, so it stays one line.
        raise UsageError(f"{untrusted.printable(message)} (see '{self.prog} --help')")


def add_config_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--config-file`` and ``--config-dir``, as oslo.config has them, into ``<prefix>config_file``/``_dir``."""
    parser.add_argument("--config-file", action="append", dest=f"{prefix}config_file", metavar="PATH",
                        help="a configuration file (may be repeated; later files override earlier ones)")
    parser.add_argument("--config-dir", action="append", dest=f"{prefix}config_dir", metavar="DIR",
                        help="a directory whose *.conf files are read after the --config-file files")


def config_argv(files: Sequence[str] | None, dirs: Sequence[str] | None) -> list[str]:
    """The oslo.config command line that reads ``files`` and ``dirs``, in that order."""
    argv: list[str] = []
    for path in files or ():
        argv += ["--config-file", path]
    for path in dirs or ():
        argv += ["--config-dir", path]
    return argv


def seconds(minimum: float = 0.0, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a number of seconds, at least (or above) ``minimum``."""
    bound = f"at least {minimum:g}" if inclusive else f"more than {minimum:g}"

    def convert(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        # NaN fails both comparisons; inf is refused as no real bound either.
        if not (number >= minimum if inclusive else number > minimum) or number == float("inf"):
            raise argparse.ArgumentTypeError(f"expected seconds ({bound}), not {untrusted.quote(value)}")
        return number

    return convert


def checked(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type from a converter raising ValueError (an oslo.config type): names ``what``."""

    def check(value: str) -> Any:
        try:
            return convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, not {untrusted.quote(value)}") from None

    return check
