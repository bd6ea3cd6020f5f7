"""The reconciler's comparison of a cascading listing with the journal."""

from __future__ import annotations

import pytest
from glanceclient import exc as glance_exc

from coordinator import reconciler
from glancesync.exceptions import GlanceError


class ListingImages:
    def __init__(self, visible: dict[str, str], hidden: dict[str, str], existing: set[str]) -> None:
        self.visible, self.hidden, self.existing = visible, hidden, existing
        self.filters: list[dict] = []

    def list(self, filters: dict):
        self.filters.append(filters)
        source = self.hidden if filters.get("os_hidden") else self.visible
        return iter([{"id": i, "status": s} for i, s in source.items()])

    def get(self, image_id: str) -> dict:
        if image_id not in self.existing:
            raise glance_exc.HTTPNotFound("gone")
        return {"id": image_id}


class Client:
    def __init__(self, images: ListingImages) -> None:
        self.images = images


def test_active_images_unknown_to_the_journal_are_missing() -> None:
    drift = reconciler.find_drift(
        {"a": "active", "b": "active", "q": "queued", "d": "deactivated"}, known={"b"}, tracked=(),
        exists=lambda i: True,
    )
    assert drift.missing == ["a", "d"]
    assert drift.vanished == []


def test_only_images_confirmed_gone_are_vanished() -> None:
    drift = reconciler.find_drift({}, known={"x", "y"}, tracked={"x", "y"}, exists=lambda i: i == "y")
    assert drift.vanished == ["x"]


def test_synthetic_events_have_stable_ids_and_valid_kinds() -> None:
    a, b = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
    events = reconciler.Drift(missing=[a], vanished=[b]).events()
    assert [(e["kind"], e["image_id"]) for e in events] == [("uploaded", a), ("deleted", b)]
    again = reconciler.Drift(missing=[a], vanished=[b]).events()
    assert [e["event_id"] for e in events] == [e["event_id"] for e in again]
    from glancesync import protocol

    for event in events:  # each must pass the wire contract the journal's events follow
        protocol.decode(protocol.encode("event", event))


def test_scan_lists_hidden_images_too_and_confirms_with_get() -> None:
    a, h = "aaaaaaaa-0000-4000-8000-000000000001", "eeeeeeee-0000-4000-8000-000000000002"
    images = ListingImages(visible={a: "active", "../../etc/passwd": "active"}, hidden={h: "active"},
                           existing={a, h, "t2"})
    drift = reconciler.scan(Client(images), known=set(), tracked={"t1", "t2"}, endpoint="http://c")
    assert drift.missing == [a, h]  # an entry whose id is not a glance id is ignored
    assert drift.vanished == ["t1"]
    assert {f["os_hidden"] for f in images.filters} == {False, True}


def test_scan_translates_glance_errors() -> None:
    class Broken:
        def list(self, filters):
            raise glance_exc.HTTPServiceUnavailable("down")

    with pytest.raises(GlanceError) as caught:
        reconciler.scan(Client(Broken()), known=(), tracked=(), endpoint="http://c")
    assert caught.value.retryable
