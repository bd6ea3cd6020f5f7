"""Fixtures for the end-to-end tests: one real topology per test session.

The ``topology`` fixture starts, on 127.0.0.1, a cascading glance-api, two cascaded
ones (RegionA, RegionB) and a private sshd (see tests/harness), and tears them all
down at the end of the session.  ``sql_servers`` starts a real PostgreSQL and MariaDB
for the journal's tests the first time one asks.  ``sync`` adds our coordinator and one agent per
region (shared, restarted when a test killed them).  Every test in this directory is
marked ``functional`` (``pytest -m "not functional"`` runs only the fast tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness import Topology

if TYPE_CHECKING:
    from tests.functional.services import SyncServices
    from tests.harness.sqlserver import SqlServer

# One-line switches for the cascading glance: our paste filter and our store driver
# Both on by default; GLANCESYNC_TEST_SYNC_FILTER=0 / GLANCESYNC_TEST_CASCADED_STORE=0 turn them off.
SYNC_FILTER = os.environ.get("GLANCESYNC_TEST_SYNC_FILTER", "1") == "1"
CASCADED_STORE = os.environ.get("GLANCESYNC_TEST_CASCADED_STORE", "1") == "1"
REGIONS = 2

_HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "functional: end-to-end test against real glance-api, sshd and our services"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.functional)


@pytest.fixture(scope="session")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """Cascading + cascaded glances + sshd, started once for the session."""
    base = tmp_path_factory.mktemp("topology")
    topo = Topology(base, regions=REGIONS, sync_filter=SYNC_FILTER, cascaded_store=CASCADED_STORE)
    try:
        topo.start()
        yield topo
    finally:
        topo.stop()


@pytest.fixture(scope="session")
def sql_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SqlServer]]:
    """A real PostgreSQL and a real MariaDB (tests/harness/sqlserver.py), started in parallel once."""
    from tests.harness import sqlserver

    absent = sqlserver.missing()
    if absent:
        pytest.fail(f"not installed: {', '.join(absent)} (tools/bootstrap.sh installs postgresql and "
                    "mariadb-server from Debian)")
    servers = sqlserver.start_servers(tmp_path_factory.mktemp("sql-servers"))
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def sync_services(topology: Topology) -> Iterator[SyncServices]:
    """One coordinator and one agent per region, shared by the session (tests/functional/services.py)."""
    from tests.functional.services import SyncServices

    services = SyncServices(topology)
    try:
        yield services
    finally:
        topology.stop_services()


@pytest.fixture
def sync(sync_services: SyncServices) -> SyncServices:
    """The shared coordinator and agents, (re)started as needed and all online before the test."""
    sync_services.ensure()
    return sync_services
