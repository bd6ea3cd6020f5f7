"""Command-line and config-file parsing shared by every console script.

Each ``cmd.py`` calls ``load(argv, prog)`` and gets its own ``ConfigOpts`` with every
option registered and oslo.log set up; a config file that does not parse or an
option with a bad value ends the program with one line naming it (exit code 2),
never with a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log as logging

from glancesync import __version__, opts

PROJECT = "glance-sync"


def load(argv: Sequence[str] | None, prog: str, setup_logging: bool = True) -> cfg.ConfigOpts:
    """A ConfigOpts parsed from ``argv`` (default sys.argv[1:]) and the given --config-file(s)."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    logging.register_options(conf)
    try:
        conf(
            list(sys.argv[1:] if argv is None else argv),
            project=PROJECT,
            prog=prog,
            version=__version__,
            default_config_files=[],
        )
        check_values(conf)
    except (cfg.Error, ValueError) as exc:
        sys.stderr.write(f"{prog}: configuration error: {exc}\n")
        raise SystemExit(2) from None
    if setup_logging:
        logging.setup(conf, PROJECT)
    return conf


def check_values(conf: cfg.ConfigOpts) -> None:
    """Read every registered option once, so a bad value in a file fails now.

    oslo.config converts file values lazily, on first access: without this, a
    typo such as ``sync_server_port = abc`` would surface as a traceback deep in
    a running service instead of one line at start.  Raises cfg.Error.
    """
    for name in conf:
        value = conf[name]
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for opt_name in value:
                value[opt_name]


def fail(prog: str, message: str, code: int = 1) -> None:
    """End a command with one line on stderr."""
    sys.stderr.write(f"{prog}: {message}\n")
    raise SystemExit(code)
