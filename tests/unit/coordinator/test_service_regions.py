"""The service plans for the live regions only (region_source = catalog), and waits for the first catalog read."""

from __future__ import annotations

import threading

from coordinator.regioncatalog import Discovery, LiveRegions
from coordinator.registrar import Registrar
from coordinator.service import Service
from coordinator.status import summary

from .conftest import NOW
from .test_service import planned, pump, send_event


def test_events_wait_for_the_first_catalog_read_then_target_the_catalog_regions_only(
        ctx, conf, stores, journal, client, regional) -> None:
    released = threading.Event()

    def reader() -> Discovery:
        released.wait(30)
        return Discovery({"RegionOne": "http://one:9292", "RegionX": "http://x:9292"})

    live = LiveRegions(stores.regions, reader=reader, interval=600.0)
    registrar = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=lambda _region: regional)
    service = Service(conf, stores, journal, registrar, context=ctx, regions=live)
    service.initialize(NOW)
    try:
        send_event(ctx, service)
        pump(service, NOW)
        assert not planned(service) and not live.ready  # nothing planned against no regions
        released.set()
        pump(service, NOW, lambda: planned(service))
        assert sorted(live) == ["RegionOne"]
        assert len(journal.dispatchable("RegionOne", NOW)) == 1
        assert journal.dispatchable("RegionTwo", NOW) == []  # in glance_store.yaml, not in the catalog
        regions = summary(journal, service.agents, service.regions, NOW, NOW)["regions"]
        assert list(regions) == ["RegionOne"]
    finally:
        released.set()
        service.shutdown()
