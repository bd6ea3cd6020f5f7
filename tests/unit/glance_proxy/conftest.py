"""Shared fixtures: a private ConfigOpts with the filter options, a free loopback port, senders."""

from __future__ import annotations

import socket

import pytest
from oslo_config import cfg

from glance_proxy.sender import EventSender
from glancesync import opts
from glancesync.liveness import Backoff


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


@pytest.fixture
def make_sender(conf):
    made: list[EventSender] = []

    def make(**kwargs) -> EventSender:
        kwargs.setdefault("ack_timeout", 0.3)
        kwargs.setdefault("backoff", Backoff(initial=0.05, maximum=0.2))
        s = EventSender(conf, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
