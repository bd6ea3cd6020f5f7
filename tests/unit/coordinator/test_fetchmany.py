"""The images of due events read with one listing of the cascading glance (glancejobs.fetch_many).

An image the listing leaves out still gets its own GET (so a 404 is judged as before), glance's
pages are followed, and a failing listing fails its events as a failing GET would: retried.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from glanceclient import exc as glance_exc

from coordinator import glancejobs
from coordinator.glancejobs import Clients
from coordinator.journal import EventRow

from .conftest import IMAGE_ID, NOW, FakeClient, image_record
from .test_service import deferred, planned, pump, send_event


def image_id(n: int) -> str:
    return f"{n:08d}-2222-3333-4444-555555555555"


def cascading(count: int) -> FakeClient:
    fake = FakeClient(listing=True)
    for n in range(count):
        fake.images.records[image_id(n)] = image_record(image_id(n))
    return fake


def clients(fake: FakeClient) -> Clients:
    return Clients(lambda: fake, lambda region: fake, "http://cascading")


def event(n: int, kind: str = "uploaded") -> EventRow:
    return EventRow(f"e{n}", kind, image_id(n), {}, NOW)


class SmallPages:
    """Pages of at most ``size`` images whatever the client asks (glance's api_limit_max)."""

    def __init__(self, http, size: int) -> None:
        self.http, self.size = http, size

    def get(self, url: str, headers=None):
        split = urlsplit(url)
        query = dict(parse_qsl(split.query))
        if "limit" in query:
            query["limit"] = str(min(int(query["limit"]), self.size))
        return self.http.get(f"{split.path}?{urlencode(query)}", headers)


def test_the_images_of_many_events_are_read_with_one_listing_and_no_get() -> None:
    fake = cascading(5)
    results = glancejobs.fetch_many(clients(fake), [event(n) for n in range(5)])
    assert [r.event_id for r in results] == [f"e{n}" for n in range(5)]
    assert [r.image for r in results] == [fake.images.records[image_id(n)] for n in range(5)]
    assert all(r.error is None for r in results)
    assert len(fake.images.listed) == 1 and fake.images.gets == []


def test_an_image_the_listing_leaves_out_is_read_with_its_own_get() -> None:
    fake = cascading(3)
    fake.images.records[image_id(1)]["os_hidden"] = True  # glance lists hidden images only when asked
    results = glancejobs.fetch_many(clients(fake), [event(n) for n in range(3)])
    assert fake.images.gets == [image_id(1)]
    assert results[1].image == fake.images.records[image_id(1)] and results[1].error is None


def test_an_image_glance_no_longer_has_is_judged_on_its_get_404() -> None:
    fake = cascading(2)
    del fake.images.records[image_id(1)]
    results = glancejobs.fetch_many(clients(fake), [event(0), event(1)])
    assert fake.images.gets == [image_id(1)]
    assert results[1].image is None and results[1].error is None  # as fetch(): gone, not failed
    assert results[0].image == fake.images.records[image_id(0)]


def test_glance_pages_are_followed() -> None:
    fake = cascading(12)
    fake.http_client = SmallPages(fake.http_client, 5)
    results = glancejobs.fetch_many(clients(fake), [event(n) for n in range(12)])
    assert [r.image["id"] for r in results] == [image_id(n) for n in range(12)]
    assert len(fake.images.listed) == 3 and fake.images.gets == []  # 5 + 5 + 2


def test_a_failing_listing_fails_every_event_of_it_as_retryable_without_a_get() -> None:
    fake = cascading(3)

    def down(filters, page_size=20):
        raise glance_exc.HTTPServiceUnavailable("glance is down")

    fake.images.list = down
    results = glancejobs.fetch_many(clients(fake), [event(n) for n in range(3)])
    assert all(r.image is None and r.error is not None and r.error.retryable for r in results)
    assert fake.images.gets == []


def test_two_events_of_one_image_get_records_of_their_own() -> None:
    fake = cascading(1)
    first, second = glancejobs.fetch_many(clients(fake), [event(0), EventRow("e9", "updated", image_id(0), {}, NOW)])
    assert first.image == second.image and first.image is not second.image


def test_the_loop_plans_an_event_from_the_listing(ctx, service, journal, client) -> None:
    assert send_event(ctx, service).type == "event_ack"
    pump(service, NOW, until=lambda: planned(service))
    assert client.images.listed and client.images.gets == []
    assert set(journal.region_records(IMAGE_ID)) == {"RegionOne", "RegionTwo"}


def test_the_loop_retries_an_event_whose_listing_failed_like_a_failed_get(ctx, service, journal, client,
                                                                          monkeypatch) -> None:
    def down(filters, page_size=20):
        raise glance_exc.HTTPServiceUnavailable("glance is down")

    monkeypatch.setattr(client.images, "list", down)
    assert send_event(ctx, service).type == "event_ack"
    pump(service, NOW, until=lambda: deferred(journal, "e1"))
    assert journal.unplanned_event("e1").fetch_tries == 1
    monkeypatch.undo()
    pump(service, NOW + 3600, until=lambda: planned(service))
    assert client.images.gets == []
