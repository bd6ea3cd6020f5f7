"""The plugin's client: the coordinator's status over zmq, and ``glance-sync-manage`` for the repairs.

The status comes the way ``glance-sync-status`` gets it (``glancesync.status.query_any``):
one ``status_query`` to ``sync_server_host``/``sync_server_port`` (or, in turn, to the
``sync_servers`` of a pair) of a ``glance-sync.conf``, with that file's ``[curve]`` keys (a key of the ``status`` or
``operator`` role; ``doc/keys-and-roles.md``).  Which file: ``--sync-config``, else
``$OS_GLANCE_SYNC_CONFIG``, else ``/etc/glance-sync/glance-sync.conf`` when it exists.

``resync``, ``plan`` and ``cancel`` change the journal, which only the coordinator's
host reaches: they run ``glance-sync-manage`` (the same code paths as an operator
typing it there) with the same config files, and pass its output and exit code on.
The plugin never imports ``coordinator``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq
from osc_lib import exceptions

from glancesync import status, transport, untrusted
from glancesync.exceptions import GlanceSyncError

CONFIG_ENV = "OS_GLANCE_SYNC_CONFIG"
KEY_ENV = "OS_GLANCE_SYNC_KEY_FILE"
MANAGE = "glance-sync-manage"
# A repair is one journal write: a minute covers a busy database; more means it hangs.
MANAGE_TIMEOUT = 120.0


def fail(message: object) -> exceptions.CommandError:
    """The plugin's one-line failure (the openstack shell prints it and exits 1); escaped text."""
    return exceptions.CommandError(untrusted.printable(message))


class SyncClient:
    """One command's way to the coordinator; ``configure`` it with the parsed options first."""

    def __init__(self) -> None:
        self.options: argparse.Namespace | None = None
        self.conf: Any = None
        self.context: zmq.Context | None = None
        self._targets: transport.Failover | None = None

    def configure(self, options: argparse.Namespace) -> SyncClient:
        """Read the config files the options name; CommandError for one that does not load."""
        self.options = options
        files = list(options.sync_config or default_config_files())
        try:
            self.conf = status.load_conf(argparse.Namespace(config_file=files, config_dir=None))
        except status.StatusFailure as exc:
            raise fail(exc) from None
        return self

    def _coordinators(self) -> transport.Failover:
        assert self.options is not None and self.conf is not None, "configure() first"
        if self._targets is None:  # kept, so a pair's active coordinator is asked first next time
            self._targets = status.coordinators(self.conf, self.options.sync_host, self.options.sync_port)
        return self._targets

    def query(self, view: str, image_id: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """The ``data`` of the coordinator's reply to one status query; CommandError when there is none."""
        assert self.options is not None
        if self.context is None:
            self.context = zmq.Context()
        try:
            return status.query_any(self.context, self.conf, self._coordinators(),
                                    {"view": view, "image_id": image_id},
                                    timeout or self.options.answer_timeout, self.options.sync_key_file)
        except status.StatusFailure as exc:
            raise fail(exc) from None
        except GlanceSyncError as exc:  # a key that does not load, a CURVE file missing
            raise fail(exc) from None

    def wait(self, image_id: str, timeout: float | None,
             display: Callable[[Mapping[str, Any]], None] | None = None) -> tuple[int, str, Mapping[str, Any]]:
        """Poll the image view until synced or failed (``status.wait_for_image``): (exit code, why, data)."""
        assert self.options is not None

        def fetch(query_timeout: float) -> Mapping[str, Any]:
            return untrusted.printable_data(self.query("image", image_id, query_timeout))

        return status.wait_for_image(fetch, timeout, display, time.monotonic, time.sleep,
                                     self.options.answer_timeout)

    def manage(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``glance-sync-manage --config-file F ... ARGV``: its output and exit code, never raised."""
        assert self.options is not None
        tool = manage_tool()
        config_args: list[str] = []
        for path in self.options.sync_config or default_config_files():
            config_args += ["--config-file", path]
        try:
            return subprocess.run([tool, *config_args, *argv], stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=MANAGE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise fail(f"{MANAGE} {argv[0]} did not finish within {MANAGE_TIMEOUT:g} s") from None
        except OSError as exc:
            raise fail(f"cannot run {tool}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self.context is not None:
            self.context.destroy(linger=0)
            self.context = None


def default_config_files() -> list[str]:
    """The config when no --sync-config is given: $OS_GLANCE_SYNC_CONFIG, else the services' default file."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return [named]
    return [status.DEFAULT_CONFIG_FILE] if os.path.isfile(status.DEFAULT_CONFIG_FILE) else []


def manage_tool() -> str:
    """``glance-sync-manage`` beside this Python (the same install), else the first on PATH."""
    found = shutil.which(MANAGE, path=os.path.dirname(sys.executable)) or shutil.which(MANAGE)
    if found is None:
        raise fail(f"{MANAGE} not found beside {sys.executable} nor on PATH: resync, plan and cancel run it "
                   "on the coordinator's host")
    return found


def checked_image_id(value: str) -> str:
    if not untrusted.is_image_id(value):
        raise fail(f"{untrusted.quote(value)} is not an image id: expected {untrusted.IMAGE_ID_FORM}")
    return value

