"""Shared fixtures: a private ConfigOpts with the filter options, a free loopback port."""

from __future__ import annotations

import socket

import pytest
from oslo_config import cfg

from glancesync import opts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def conf(tmp_path):
    conf = cfg.ConfigOpts()
    opts.register_filter_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("sync_enabled", True)
    conf.set_override("sync_server_host", "127.0.0.1")
    conf.set_override("sync_server_port", free_port())
    conf.set_override("spool_dir", str(tmp_path / "spool"), group="proxy")
    return conf
