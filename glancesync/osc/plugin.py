"""The ``openstack.cli.extension`` module of the plugin: what python-openstackclient asks of one.

The openstack shell reads ``API_NAME`` and the version option to pick the command
group ``openstack.glance_sync.v1`` (setup.py lists its commands) and calls
``make_client`` the first time a command asks for ``client_manager.glance_sync``.
The client talks to the coordinator, not to a keystone endpoint: it needs no token,
only the status tool's config and key (``glancesync.osc.client``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from glancesync.osc.client import SyncClient

API_NAME = "glance_sync"
API_VERSION_OPTION = "os_glance_sync_api_version"
DEFAULT_API_VERSION = "1"
API_VERSIONS = {"1": "glancesync.osc.client.SyncClient"}


def make_client(instance: Any) -> SyncClient:
    """The plugin's client; each command configures it with its own options."""
    return SyncClient()


def build_option_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The global option of the API version (only 1 exists), as every plugin has one."""
    parser.add_argument(
        "--os-glance-sync-api-version", metavar="<version>",
        default=os.environ.get("OS_GLANCE_SYNC_API_VERSION", DEFAULT_API_VERSION),
        help=f"glance sync API version, default={DEFAULT_API_VERSION} (Env: OS_GLANCE_SYNC_API_VERSION)")
    return parser
