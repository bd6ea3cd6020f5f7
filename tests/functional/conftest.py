"""Fixtures for the end-to-end tests: one real topology per test session.

The ``topology`` fixture starts, on 127.0.0.1, a cascading glance-api, two cascaded
ones (RegionA, RegionB) and a private sshd (see tests/harness), and tears them all
down at the end of the session.  Every test in this directory is marked
``functional`` (``pytest -m "not functional"`` runs only the fast tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Topology

# One-line switches for the cascading glance: our paste filter and our store driver.
SYNC_FILTER = False
CASCADED_STORE = False
REGIONS = 2

_HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "functional: end-to-end test against real glance-api, sshd and our services"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
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
