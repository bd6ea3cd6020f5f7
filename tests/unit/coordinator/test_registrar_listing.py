"""The regional images of copies that finished together are read with one listing per region, not one GET each."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

from coordinator.registrar import Registrar
from glancesync import glance

from .conftest import IMAGE_ID, FakeClient, image_record
from .test_registrar import good_report, regional_factory, regional_record, task, wait_results

OTHER = "22222222-3333-4444-5555-666666666666"


def listing_client(hidden: set[str] | None = None, fail: bool = False) -> FakeClient:
    """A regional glance that also answers ``images.list(filters={"id": "in:..."})`` and records each call."""
    fake = FakeClient()
    fake.listings = []

    def listing(filters: dict[str, Any], page_size: int = 20):
        fake.listings.append(dict(filters))
        if fail:
            from glanceclient import exc

            raise exc.HTTPServiceUnavailable("glance-api restarting")
        ids = filters["id"].removeprefix("in:").split(",")
        shown = [dict(fake.images.records[i]) for i in ids if i in fake.images.records and i not in (hidden or ())]
        # An entry nobody asked for (a glance that ignores the filter) must not be taken for one.
        return iter([*shown, regional_record(id="33333333-4444-5555-6666-777777777777")])

    fake.images.list = listing
    return fake


def register_together(regional: FakeClient, tasks: list) -> list:
    client = FakeClient()
    for t in tasks:
        client.images.records[t.image_id] = image_record(t.image_id)
    registrar = Registrar(lambda: client, 1, "http://cascading",
                          regional_client_factory=regional_factory({"RegionOne": regional}))
    hold = threading.Event()
    try:
        registrar.pool.submit(hold.wait)  # the one worker is busy: the copies wait together
        for t in tasks:
            registrar.register(t)
        hold.set()
        return wait_results(registrar, len(tasks))
    finally:
        registrar.shutdown()


def two_copies() -> list:
    first = task(report=good_report())
    second = dataclasses.replace(first, task_id="t2", image_id=OTHER)
    return [first, second]


def test_copies_of_one_region_are_read_with_one_listing_and_no_get() -> None:
    regional = listing_client()
    for image_id in (IMAGE_ID, OTHER):
        regional.images.records[image_id] = regional_record(id=image_id)
    results = register_together(regional, two_copies())
    assert all(r.ok for r in results), results
    assert regional.listings == [{"id": f"in:{IMAGE_ID},{OTHER}", "visibility": "all"}]
    assert regional.images.gets == []


def test_an_image_the_listing_leaves_out_is_read_on_its_own() -> None:
    regional = listing_client(hidden={OTHER})  # e.g. os_hidden: not listed, yet it exists
    for image_id in (IMAGE_ID, OTHER):
        regional.images.records[image_id] = regional_record(id=image_id)
    results = register_together(regional, two_copies())
    assert all(r.ok for r in results), results
    assert regional.images.gets == [OTHER]


def test_a_listed_copy_with_other_bytes_is_never_registered() -> None:
    regional = listing_client()
    regional.images.records[IMAGE_ID] = regional_record(id=IMAGE_ID, os_hash_value="0" * 128)
    regional.images.records[OTHER] = regional_record(id=OTHER)
    results = {r.task_id: r for r in register_together(regional, two_copies())}
    assert not results["t1"].ok and not results["t1"].retryable
    assert results["t2"].ok
    assert regional.images.gets == []


def test_a_listing_that_fails_falls_back_to_one_read_per_image() -> None:
    regional = listing_client(fail=True)
    for image_id in (IMAGE_ID, OTHER):
        regional.images.records[image_id] = regional_record(id=image_id)
    results = register_together(regional, two_copies())
    assert all(r.ok for r in results), results
    assert sorted(regional.images.gets) == sorted([IMAGE_ID, OTHER])


def test_a_missing_regional_image_is_still_not_registered() -> None:
    regional = listing_client()
    regional.images.records[OTHER] = regional_record(id=OTHER)
    results = {r.task_id: r for r in register_together(regional, two_copies())}
    assert not results["t1"].ok and results["t1"].redo_transfer  # listed nowhere, read alone: 404
    assert results["t2"].ok


@pytest.mark.parametrize("count", [1, glance.IDS_PER_LISTING, glance.IDS_PER_LISTING + 1])
def test_images_by_id_asks_at_most_a_bounded_number_of_ids_per_listing(count: int) -> None:
    regional = listing_client()
    ids = [f"{n:08d}-2222-3333-4444-555555555555" for n in range(count)]
    for image_id in ids:
        regional.images.records[image_id] = regional_record(id=image_id)
    found = glance.images_by_id(regional, [*ids, "not-an-id,with-a-comma"], "region")
    assert sorted(found) == sorted(ids)
    assert [len(f["id"].removeprefix("in:").split(",")) for f in regional.listings] == \
        ([count] if count <= glance.IDS_PER_LISTING else [glance.IDS_PER_LISTING, 1])
