"""Regions from the keystone catalog: URL normalisation, discovery, the live set and its refresh."""

from __future__ import annotations

import logging
from concurrent import futures
from types import SimpleNamespace
from typing import Any

import pytest
from keystoneauth1.access import service_catalog

from coordinator import regioncatalog
from coordinator.regioncatalog import (
    CatalogReader,
    Discovery,
    LiveRegions,
    discover,
    image_endpoints,
    normalise_url,
)
from glancesync.exceptions import ConfigError, GlanceError
from glancesync.storemap import GlanceEndpoint, Region

CASCADING = "http://cascading.example:9292"


def region(name: str) -> Region:
    return Region(name=name, glance=GlanceEndpoint(url=f"http://{name.lower()}:9292"))


CONFIGURED = {name: region(name) for name in ("RegionA", "RegionB", "RegionC")}


def catalog(*entries: tuple[str, str, str]) -> service_catalog.ServiceCatalogV3:
    """A real keystoneauth1 v3 catalog with image endpoints (region, interface, url) and one identity."""
    return service_catalog.ServiceCatalogV3([
        {"type": "image", "name": "glance",
         "endpoints": [{"region_id": r, "region": r, "interface": i, "url": u} for r, i, u in entries]},
        {"type": "identity", "name": "keystone",
         "endpoints": [{"region_id": "RegionA", "interface": "public", "url": "http://keystone:5000/v3"}]},
    ])


@pytest.mark.parametrize("url", [
    "http://cascading.example:9292", "http://cascading.example:9292/", "HTTP://Cascading.Example:9292/v2",
    "http://cascading.example:9292/v2/", "http://cascading.example:9292/v2.0",
])
def test_spellings_of_one_endpoint_normalise_alike(url: str) -> None:
    assert normalise_url(url) == normalise_url(CASCADING)


@pytest.mark.parametrize("url", [
    "https://cascading.example:9292", "http://cascading.example:9293", "http://other.example:9292",
    "http://cascading.example:9292/image", "http://cascading.example:9292/v2/images",
])
def test_other_endpoints_stay_apart(url: str) -> None:
    assert normalise_url(url) != normalise_url(CASCADING)


def test_default_ports_and_path_prefixes() -> None:
    assert normalise_url("https://glance/image/v2/") == normalise_url("https://glance:443/image")
    assert normalise_url("http://glance") == "http://glance:80"
    assert normalise_url("http://[::1]:9292/v2") == "http://[::1]:9292"


def test_image_endpoints_of_the_interface_asked_for() -> None:
    found = image_endpoints(catalog(("RegionA", "public", "http://a:9292"), ("RegionA", "internal", "http://ai:9292"),
                                    ("RegionB", "internal", "http://bi:9292")), "internal")
    assert found == {"RegionA": ["http://ai:9292"], "RegionB": ["http://bi:9292"]}
    assert image_endpoints(catalog(("RegionB", "internal", "http://bi:9292")), "public") == {}


def test_the_cascading_endpoint_is_not_a_region() -> None:
    found = discover({"Cascading": [CASCADING + "/v2/"], "RegionA": ["http://a:9292"],
                      "Mixed": [CASCADING, "http://mixed:9292"]}, CASCADING)
    assert found.regions == {"RegionA": "http://a:9292", "Mixed": "http://mixed:9292"}
    assert found.cascading == ("Cascading",)


def test_only_regions_in_both_catalog_and_glance_store_are_live(caplog: pytest.LogCaptureFixture) -> None:
    live = LiveRegions(CONFIGURED, reader=lambda: Discovery({}))
    assert not live.ready and list(live) == []
    caplog.set_level(logging.INFO, logger=regioncatalog.__name__)
    found = Discovery({"RegionA": "http://a:9292", "RegionB": "http://b:9292", "RegionX": "http://x:9292"},
                      ("Cascading",), CASCADING)
    live.apply(found)
    assert live.ready and sorted(live) == ["RegionA", "RegionB"] and live["RegionA"] is CONFIGURED["RegionA"]
    text = caplog.text
    assert "region RegionX is in the keystone catalog" in text and "no credentials or work dir" in text
    assert "region RegionC is in glance_store.yaml but has no image endpoint" in text
    assert "region Cascading: its image endpoint in the catalog is the cascading glance" in text
    caplog.clear()
    live.apply(found)  # the same problems: not logged again
    assert "RegionX" not in caplog.text and "RegionC" not in caplog.text


def test_a_region_that_appears_later_becomes_live_and_a_vanished_one_is_logged_again(
        caplog: pytest.LogCaptureFixture) -> None:
    live = LiveRegions(CONFIGURED, reader=lambda: Discovery({}))
    live.apply(Discovery({"RegionA": "http://a:9292"}))
    live.apply(Discovery({"RegionA": "http://a:9292", "RegionC": "http://c:9292"}))
    assert sorted(live) == ["RegionA", "RegionC"]
    caplog.set_level(logging.WARNING, logger=regioncatalog.__name__)
    live.apply(Discovery({"RegionA": "http://a:9292"}))
    assert sorted(live) == ["RegionA"] and "region RegionC is in glance_store.yaml but has no" in caplog.text


def test_config_source_is_glance_store_and_ready() -> None:
    live = LiveRegions(CONFIGURED)
    live.refresh(0.0)
    live.read_now()
    assert live.ready and dict(live) == CONFIGURED


def test_refresh_reads_in_a_thread_when_due_and_keeps_the_last_good_answer_on_failure() -> None:
    answers: list[Any] = [Discovery({"RegionA": "a"}), RuntimeError("keystone down"), Discovery({"RegionB": "b"})]

    def reader() -> Discovery:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    live = LiveRegions(CONFIGURED, reader=reader, interval=60.0)
    try:
        for now, expected in ((0.0, ["RegionA"]), (60.0, ["RegionA"]), (120.0, ["RegionB"])):
            live.refresh(now)  # starts the read
            assert live._future is not None
            futures.wait([live._future], timeout=30)
            live.refresh(now)  # applies it
            assert sorted(live) == expected
            live.refresh(now + 1.0)  # not due yet: no read started
            assert live._future is None
    finally:
        live.shutdown()
    assert answers == []


def test_read_now_turns_a_failure_into_a_glance_error() -> None:
    def down() -> Discovery:
        raise ConnectionError("refused")

    with pytest.raises(GlanceError, match="keystone catalog"):
        LiveRegions(CONFIGURED, reader=down).read_now()


class FakeAuth:
    def __init__(self, cat: Any) -> None:
        self.cat = cat
        self.invalidated = 0

    def invalidate(self) -> None:
        self.invalidated += 1

    def get_access(self, sess: Any) -> Any:
        return SimpleNamespace(service_catalog=self.cat)


def test_catalog_reader_takes_a_fresh_token_and_finds_the_cascading_glance_in_the_catalog(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cat = catalog(("Cascading", "public", CASCADING + "/"), ("RegionA", "public", "http://a:9292"),
                  ("RegionB", "internal", "http://b:9292"))
    auth = FakeAuth(cat)
    asked: dict[str, Any] = {}

    def get_endpoint(**kwargs: Any) -> str:
        asked.update(kwargs)
        return CASCADING

    sess = SimpleNamespace(auth=auth, get_endpoint=get_endpoint)
    made: list[GlanceEndpoint] = []
    monkeypatch.setattr(regioncatalog.glance, "make_session", lambda endpoint: made.append(endpoint) or sess)
    endpoint = GlanceEndpoint(url=None, auth={"auth_type": "password"}, region_name="Cascading",
                              internal_secret=b"s" * 32)
    found = CatalogReader(endpoint, "public")()
    assert made[0].internal_secret is None  # keystone's requests are never signed with the loop guard
    assert found.regions == {"RegionA": "http://a:9292"} and found.cascading == ("Cascading",)
    assert auth.invalidated == 1 and asked["region_name"] == "Cascading" and asked["service_type"] == "image"


def test_live_regions_from_options() -> None:
    stores = SimpleNamespace(regions=CONFIGURED)
    keystone = GlanceEndpoint(url=None, auth={"auth_type": "password", "auth_url": "http://k/v3"})
    group = SimpleNamespace(region_source="config", catalog_interface="public", catalog_refresh_interval=60.0)
    assert regioncatalog.live_regions(group, stores, keystone).source == "config"
    group.region_source = "catalog"
    live = regioncatalog.live_regions(group, stores, keystone)
    assert live.source == "catalog" and not live.ready
    live.shutdown()
    with pytest.raises(ConfigError, match="keystone credentials"):
        regioncatalog.live_regions(group, stores, GlanceEndpoint(url="http://c:9292"))
