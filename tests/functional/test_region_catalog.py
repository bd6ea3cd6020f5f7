"""Regions from the keystone catalog (``[coordinator] region_source = catalog``), with a real keystone.

The topology's catalog holds an image endpoint for the cascading site and for each
region.  Before the coordinator starts, RegionB's image endpoint is pointed at the
cascading glance (spelled with a version suffix and a trailing slash): RegionB is in
glance_store.yaml, so only the cascading-endpoint rule keeps it from being synced.  An
image then reaches RegionA alone; once the catalog gives RegionB its own glance again,
the coordinator's next catalog read makes it live and the reconciler copies the image.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.functional import helpers
from tests.harness.topology import CASCADING_REGION, Topology


def _region_b_points_at_the_cascading_glance(topo: Topology) -> None:
    assert topo.keystone is not None
    topo.keystone.set_image_endpoint("RegionB", f"{topo.cascading.url}/v2/")


@pytest.fixture(scope="module")
def catalog_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with helpers.keystone_topology(tmp_path_factory.mktemp("catalog-topology"),
                                   _region_b_points_at_the_cascading_glance,
                                   region_source="catalog", catalog_refresh_interval=1) as topo:
        yield topo


def coordinator_log(topo: Topology) -> str:
    coordinator = next(s for s in topo.services if s.name == "coordinator")
    return coordinator.log_path.read_text(errors="replace")


def test_catalog_regions_are_synced_and_the_cascading_endpoint_is_not_a_region(catalog_topology: Topology) -> None:
    topo = catalog_topology
    assert topo.keystone is not None
    image = helpers.upload_random(topo.client(topo.cascading), 2 * helpers.MIB, name="catalog-regions")
    helpers.wait_states(topo, image.id, "synced", regions=["RegionA"], timeout=180)
    copy = topo.client(topo.cascaded["RegionA"]).images.get(image.id)
    assert (copy["status"], copy["checksum"]) == ("active", image.md5)
    # RegionB's catalog endpoint is the cascading glance: no task, no copy there, nothing in the cascading glance.
    assert "RegionB" not in helpers.image_regions(topo, image.id)
    assert image.id not in {i["id"] for i in topo.client(topo.cascaded["RegionB"]).images.list()}
    log = coordinator_log(topo)
    assert "region RegionB: its image endpoint in the catalog is the cascading glance" in log
    assert f"region {CASCADING_REGION}: its image endpoint in the catalog is the cascading glance" in log

    # The catalog gives RegionB its own glance: the next read makes it live, the reconciler copies.
    topo.keystone.set_image_endpoint("RegionB", topo.cascaded["RegionB"].url)
    helpers.wait_states(topo, image.id, "synced", timeout=240)
    copy = topo.client(topo.cascaded["RegionB"]).images.get(image.id)
    assert (copy["status"], copy["checksum"]) == ("active", image.md5)
    assert "regions synced (keystone catalog): RegionA, RegionB" in coordinator_log(topo)
