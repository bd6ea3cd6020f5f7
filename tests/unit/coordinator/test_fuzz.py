"""Fuzzing what the coordinator parses from glance: image records into plans, reports against records.

Glance is the truth, but its records are still data: the planner must turn any
record into a plan (refusing a source with a reason), never raise; verification
raises VerificationError and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import yaml
from hypothesis import given
from hypothesis import strategies as st

from coordinator import planner, reconciler, regiondrift
from coordinator.journal import RegionRecord
from glancesync import storemap
from glancesync import verify as check
from glancesync.exceptions import GlanceSyncError, VerificationError
from glancesync.states import SyncState
from tests.unit.fuzz import FUZZ, IMAGE_ID, json_maps, scalars, values

from .conftest import ListingHttp

SAMPLE = Path(__file__).resolve().parents[3] / "etc" / "glance_store.yaml.sample"

def _sample_inline() -> dict:
    """The sample glance_store.yaml with each region's glance_file replaced by an inline endpoint."""
    data = yaml.safe_load(SAMPLE.read_text())
    for region in data["regions"].values():
        if region.pop("glance_file", None):
            region["glance"] = {"url": "http://glance.example.com:9292"}
    return data


STORES = storemap.parse(_sample_inline())
STORE_DIR = STORES.store.store_dir
KINDS = sorted(planner.COPY_EVENTS | planner.UPDATE_EVENTS | {"deleted", "locations_changed"})

urls = st.sampled_from([
    f"file://{STORE_DIR}/{IMAGE_ID}", f"file://{STORE_DIR}/../../etc/passwd", "file:///etc/shadow",
    f"file://[{STORE_DIR}", "file://host/x", f"http://{STORE_DIR}", "file://", f"file://{STORE_DIR}",
    f"file://{STORE_DIR}/a%00b", f"file://localhost{STORE_DIR}/x",
]) | st.text(max_size=40)
locations = st.lists(st.fixed_dictionaries({}, optional={"url": urls | scalars, "metadata": values}) | values,
                     max_size=3)
images = st.fixed_dictionaries({}, optional={
    "id": st.just(IMAGE_ID) | scalars,
    "status": st.sampled_from(["active", "queued", "importing", "killed", "deleted"]) | scalars,
    "locations": locations | values,
    "direct_url": urls | scalars,
    planner.USER_REGIONS_PROPERTY: st.sampled_from(["RegionOne", "RegionOne, RegionTwo", ",,"]) | scalars,
    "os_hash_value": scalars, "size": scalars, "checksum": scalars,
}) | json_maps
records = st.builds(RegionRecord, st.sampled_from(list(SyncState)),
                    st.sampled_from(["copy", "update", "delete", None]), st.none() | st.text(max_size=8))


@FUZZ
@given(kind=st.sampled_from(KINDS), image=st.none() | images, strategy=st.sampled_from(["ALL", "USER", "None"]),
       existing=st.dictionaries(st.sampled_from(sorted(STORES.regions)), records, max_size=2))
def test_any_image_record_becomes_a_plan(kind: str, image: dict[str, Any] | None, strategy: str,
                                         existing: dict[str, RegionRecord]) -> None:
    plan = planner.plan(kind, IMAGE_ID, image, STORES.regions, strategy, existing, STORES.source_path)
    for task in plan.tasks:
        assert task.region in STORES.regions
        msgpack.packb(task.payload, use_bin_type=True)  # the journal stores it
        source = task.payload["source"]
        if source is not None:
            assert source["path"].startswith(STORE_DIR + "/") and ".." not in source["path"].split("/")
    assert all(isinstance(why, str) for why in plan.failures.values())


@FUZZ
@given(image=images, regional=json_maps | st.fixed_dictionaries({}, optional={
    k: scalars for k in ("status", "size", "checksum", "os_hash_algo", "os_hash_value")}))
def test_verification_raises_only_verification_error(image: dict[str, Any], regional: dict[str, Any]) -> None:
    try:
        check.verify(check.Digest.of_record(image, "cascading image"),
                     check.Digest.of_record(regional, "regional image"), image_id=IMAGE_ID)
    except VerificationError:
        return
    # Passed: the regional record is active, with the same size and at least one content hash.
    assert regional.get("status") == "active" and image.get("size") == regional.get("size") is not None
    assert any(image.get(k) == regional.get(k) is not None for k in ("checksum", "os_hash_value"))


class Listing:
    def __init__(self, pages: list[Any]) -> None:
        self.pages = pages

    def list(self, filters: dict[str, Any], page_size: int = 20) -> Any:
        return iter(self.pages)

    def get(self, image_id: str) -> Any:
        return {"id": image_id}


@FUZZ
@given(listing=st.lists(images | values, max_size=4))
def test_a_glance_listing_of_any_shape_is_drift_or_a_glance_error(listing: list[Any]) -> None:
    client = type("C", (), {"images": Listing(listing), "http_client": ListingHttp(Listing(listing))})()
    try:
        # The same listing stands for a region's, judged against a journal that knows its ids.
        ids = {i.get("id") for i in listing if isinstance(i, dict) and isinstance(i.get("id"), str)}
        facts = {i: {"RegionOne": ("synced", 0.0)} for i in ids}
        policy = regiondrift.Policy(("RegionOne",), "ALL", 10_000.0, failed_retry_after=1.0)
        inputs = reconciler.Inputs(known=ids, tracked=set(), facts=facts, policy=policy)
        drift = reconciler.scan(client, lambda region: client, inputs, endpoint="http://c")
    except GlanceSyncError:
        return
    assert all(isinstance(i, str) for i in drift.missing)
    assert all(r.action in regiondrift.ACTIONS and r.region == "RegionOne" for r in drift.repairs)
