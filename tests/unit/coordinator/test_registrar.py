"""The registrar: the regional image read and verified before registration, idempotent location add
(its endpoint and signed session: test_registrar_endpoint.py)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from coordinator.journal import EventRow, TaskRow
from coordinator.registrar import FetchResult, Registrar, TaskResult
from glancesync import protocol
from glancesync.exceptions import ConfigError
from glancesync.states import SyncState

from .conftest import IMAGE_ID, FakeClient, image_record


def task(kind: str = "copy", report=None) -> TaskRow:
    return TaskRow(task_id="t1", seq=1, image_id=IMAGE_ID, region="RegionOne", kind=kind,
                   state=SyncState.REGISTERING, attempt=3, agent_id="a", lease_expires=None,
                   not_before=0.0, retries=0, bytes_done=0, bytes_total=0, last_error=None,
                   payload={}, report=report)


def good_report() -> dict:
    image = image_record()
    return {k: image[k] for k in ("size", "checksum", "os_hash_algo", "os_hash_value")}


@pytest.fixture
def client():
    fake = FakeClient()
    fake.images.records[IMAGE_ID] = image_record()
    return fake


@pytest.fixture
def regionals():
    """Each region's glance, holding the verified copy unless a test changes it."""
    fakes = {name: FakeClient() for name in ("RegionOne", "RegionTwo", "RegionThree")}
    for fake in fakes.values():
        fake.images.records[IMAGE_ID] = regional_record()
    return fakes


def regional_record(**overrides) -> dict:
    record = {k: v for k, v in image_record().items() if k != "locations"}
    record.update(overrides)
    return record


def regional_factory(regionals: dict, built: list | None = None):
    def make(region: str):
        if built is not None:
            built.append(region)
        if region not in regionals:
            raise ConfigError(source="glance_store.yaml", detail=f"unknown region {region!r}")
        return regionals[region]

    return make


@pytest.fixture
def make_registrar(client, regionals):
    """Registrar(workers) over the fake glances, shut down after the test; ``built`` records the regional
    clients made."""
    made: list[Registrar] = []

    def make(workers: int = 2, built: list | None = None) -> Registrar:
        made.append(Registrar(lambda: client, workers, "http://cascading",
                              regional_client_factory=regional_factory(regionals, built)))
        return made[-1]

    yield make
    for reg in made:
        reg.shutdown()


@pytest.fixture
def registrar(make_registrar):
    return make_registrar()


def register_regions(registrar: Registrar, regions: list[str], hold_worker: bool = False) -> list:
    """Register one copy task per region (ids t0, t1...) and wait for every result.

    ``hold_worker``: the pool's one worker is kept busy until all are queued, so they wait together."""
    hold = threading.Event()
    if hold_worker:
        registrar.pool.submit(hold.wait)
    for n, region in enumerate(regions):
        registrar.register(dataclasses.replace(task(report=good_report()), task_id=f"t{n}", region=region))
    hold.set()
    return wait_results(registrar, len(regions))


def wait_result(registrar: Registrar) -> TaskResult | FetchResult:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        results = registrar.results()
        if results:
            return results[0]
        time.sleep(0.01)
    raise AssertionError("no result")


def test_verified_copy_is_registered_with_region_metadata(registrar, client, regionals) -> None:
    registrar.register(task(report=good_report()))
    result = wait_result(registrar)
    assert result.ok and (result.task_id, result.attempt) == ("t1", 3)
    assert client.images.added == [(IMAGE_ID, protocol.cascaded_url("RegionOne", IMAGE_ID), {"region": "RegionOne"})]
    assert regionals["RegionOne"].images.gets == [IMAGE_ID], "the regional image was never read"


@pytest.mark.parametrize("key, value", [
    ("size", 1), ("checksum", "0" * 32), ("os_hash_value", "0" * 128),
    ("size", None), ("checksum", None), ("os_hash_value", None),
])
def test_a_regional_image_with_other_bytes_is_never_registered(registrar, client, regionals, key, value) -> None:
    """The agent's report is correct-looking (forged or mistaken); the region holds something else."""
    regionals["RegionOne"].images.records[IMAGE_ID][key] = value
    registrar.register(task(report=good_report()))
    result = wait_result(registrar)
    assert not result.ok and not result.retryable, result
    assert key in result.reason and "RegionOne image" in result.reason
    assert client.images.added == []


def test_a_missing_regional_image_is_never_registered_and_is_retried(registrar, client, regionals) -> None:
    regionals["RegionOne"].images.records.clear()
    registrar.register(task(report=good_report()))
    result = wait_result(registrar)
    assert not result.ok and result.retryable
    assert "region RegionOne has no such image" in result.reason
    assert client.images.added == []


@pytest.mark.parametrize("status", ["queued", "saving", "deactivated"])
def test_a_regional_image_not_active_is_never_registered_and_is_retried(registrar, client, regionals,
                                                                        status) -> None:
    regionals["RegionOne"].images.records[IMAGE_ID]["status"] = status
    registrar.register(task(report=good_report()))
    result = wait_result(registrar)
    assert not result.ok and result.retryable and f"is {status}, not active" in result.reason
    assert client.images.added == []


def test_the_agents_report_is_not_believed_glance_is(registrar, client) -> None:
    """A report that disagrees does not matter when the regional image itself matches."""
    registrar.register(task(report={**good_report(), "checksum": "0" * 32}))
    assert wait_result(registrar).ok
    assert len(client.images.added) == 1


def test_an_empty_report_still_registers_a_matching_regional_image(registrar, client) -> None:
    registrar.register(task(report={}))
    assert wait_result(registrar).ok


def test_a_legacy_image_is_registered_on_size_and_md5(registrar, client, regionals) -> None:
    client.images.records[IMAGE_ID].update(os_hash_algo=None, os_hash_value=None)
    registrar.register(task(report=good_report()))
    assert wait_result(registrar).ok
    regionals["RegionTwo"].images.records[IMAGE_ID]["checksum"] = "0" * 32
    registrar.register(dataclasses.replace(task(report=good_report()), task_id="t2", region="RegionTwo"))
    result = wait_result(registrar)
    assert not result.ok and "checksum mismatch" in result.reason
    assert [a[1] for a in client.images.added] == [protocol.cascaded_url("RegionOne", IMAGE_ID)]


def test_an_image_with_no_hash_at_all_cannot_be_verified(registrar, client) -> None:
    client.images.records[IMAGE_ID].update(checksum=None, os_hash_algo=None, os_hash_value=None)
    registrar.register(task(report=good_report()))
    result = wait_result(registrar)
    assert not result.ok and not result.retryable and "cannot be verified" in result.reason
    assert client.images.added == []


SHA256 = "2" * 64


def test_a_region_hashing_with_sha256_is_linked_by_the_agents_region_hash(registrar, client, regionals) -> None:
    regionals["RegionOne"].images.records[IMAGE_ID].update(os_hash_algo="sha256", os_hash_value=SHA256)
    registrar.register(task(report={**good_report(), "region_hash_algo": "sha256", "region_hash_value": SHA256}))
    assert wait_result(registrar).ok
    assert len(client.images.added) == 1


@pytest.mark.parametrize("extra", [{}, {"region_hash_algo": "sha256", "region_hash_value": "3" * 64}])
def test_a_region_hashing_with_sha256_without_a_matching_region_hash_is_not_registered(
        registrar, client, regionals, extra) -> None:
    regionals["RegionOne"].images.records[IMAGE_ID].update(os_hash_algo="sha256", os_hash_value=SHA256)
    registrar.register(task(report={**good_report(), **extra}))
    result = wait_result(registrar)
    assert not result.ok and not result.retryable and "sha256" in result.reason
    assert client.images.added == []


def test_regional_clients_are_built_lazily_once_per_region_and_thread(make_registrar) -> None:
    built: list[str] = []
    registrar = make_registrar(1, built)
    assert built == []
    assert all(r.ok for r in register_regions(registrar, ["RegionOne", "RegionTwo", "RegionOne"]))
    assert built == ["RegionOne", "RegionTwo"]


def test_a_region_without_configuration_fails_for_good(registrar, client) -> None:
    registrar.register(dataclasses.replace(task(report=good_report()), region="Nowhere"))
    result = wait_result(registrar)
    assert not result.ok and not result.retryable and "unknown region" in result.reason
    assert client.images.added == []


def test_registration_is_idempotent(registrar, client) -> None:
    url = protocol.cascaded_url("RegionOne", IMAGE_ID)
    client.images.records[IMAGE_ID]["locations"].append({"url": url, "metadata": {"region": "RegionOne"}})
    registrar.register(task(report=good_report()))
    assert wait_result(registrar).ok
    assert client.images.added == []


def test_already_exists_from_glance_counts_as_done(registrar, client) -> None:
    from glanceclient import exc

    def refuse(*_args):
        raise exc.HTTPBadRequest("Location already exists")

    client.images.add_location = refuse
    registrar.register(task(report=good_report()))
    assert wait_result(registrar).ok


def test_deleted_cascading_image_fails_for_good(registrar, client) -> None:
    client.images.records.clear()
    registrar.register(task(report=good_report()))
    result = wait_result(registrar)
    assert not result.ok and not result.retryable


def test_unregister_keeps_the_last_location(registrar, client) -> None:
    url = protocol.cascaded_url("RegionOne", IMAGE_ID)
    client.images.records[IMAGE_ID]["locations"] = [{"url": url, "metadata": {}}]
    registrar.unregister(task("delete"))
    assert wait_result(registrar).ok and client.images.removed == []
    client.images.records[IMAGE_ID]["locations"].insert(0, {"url": "file:///s/x", "metadata": {}})
    registrar.unregister(task("delete"))
    assert wait_result(registrar).ok and client.images.removed == [(IMAGE_ID, {url})]


def test_fetch_of_a_missing_image_is_none(registrar, client) -> None:
    from .conftest import add_listing

    add_listing(client.images)  # events are fetched by listing; an image it leaves out gets its own GET
    client.images.records.clear()
    registrar.fetch_many([EventRow("e1", "updated", IMAGE_ID, {}, 0.0)])
    result = wait_result(registrar)
    assert result.image is None and result.error is None


def test_concurrent_registrations_of_one_image_keep_every_location(make_registrar, client) -> None:
    """Glance rewrites the whole location set per PATCH: adds to one image must not overlap."""
    client.images.write_delay = 0.05
    results = register_regions(make_registrar(4), ["RegionOne", "RegionTwo", "RegionThree"])
    assert all(r.ok for r in results), results
    urls = {loc["url"] for loc in client.images.records[IMAGE_ID]["locations"]}
    assert {protocol.cascaded_url(r, IMAGE_ID) for r in ("RegionOne", "RegionTwo", "RegionThree")} <= urls


def test_location_lost_after_add_is_a_retryable_failure(registrar, client) -> None:
    def lossy(image_id, url, metadata):
        return dict(client.images.records[image_id])  # answered, but without our location

    client.images.add_location = lossy
    registrar.register(task(report=good_report()))
    result = wait_result(registrar)
    assert not result.ok and result.retryable
    assert "missing after it was added" in result.reason


def wait_results(registrar: Registrar, count: int) -> list:
    results: list = []
    deadline = time.monotonic() + 5
    while len(results) < count and time.monotonic() < deadline:
        results += registrar.results()
        time.sleep(0.01)
    assert len(results) == count, results
    return results


def test_a_cascading_image_not_active_is_not_registered_and_is_retried(registrar, client) -> None:
    client.images.records[IMAGE_ID]["status"] = "deactivated"
    registrar.register(task(report=good_report()))
    result = wait_result(registrar)
    assert not result.ok and result.retryable and "cascading image is deactivated" in result.reason
    assert client.images.added == []


def test_regions_of_one_image_waiting_together_are_registered_with_one_read_and_one_patch(
        make_registrar, client) -> None:
    regions = ["RegionOne", "RegionTwo", "RegionThree"]
    # The one worker is busy while the three are queued: they wait for the same job.
    results = register_regions(make_registrar(1), regions, hold_worker=True)
    assert all(r.ok for r in results), results
    assert [len(ops) for _image, ops in client.http_client.patches] == [3]  # one PATCH, every region
    assert client.images.added == []
    assert client.images.gets == [IMAGE_ID]  # one read before; after, glance's answer to the PATCH
    urls = {loc["url"] for loc in client.images.records[IMAGE_ID]["locations"]}
    assert {protocol.cascaded_url(r, IMAGE_ID) for r in regions} <= urls


def test_a_patch_answered_without_one_of_its_locations_is_not_registered(make_registrar, client,
                                                                         monkeypatch) -> None:
    real_patch = client.http_client.patch

    def patch_then_lost(url, headers=None, data="[]"):
        _resp, body = real_patch(url, headers=headers, data=data)
        lost = protocol.cascaded_url("RegionTwo", IMAGE_ID)  # a concurrent writer's set won
        return None, dict(body, locations=[loc for loc in body["locations"] if loc["url"] != lost])

    monkeypatch.setattr(client.http_client, "patch", patch_then_lost)
    results = register_regions(make_registrar(1), ["RegionOne", "RegionTwo"], hold_worker=True)
    assert all(not r.ok and r.retryable and "missing after" in r.reason for r in results), results


def test_a_patch_answered_without_a_record_is_checked_by_reading_the_image(make_registrar, client,
                                                                           monkeypatch) -> None:
    real_patch = client.http_client.patch
    monkeypatch.setattr(client.http_client, "patch", lambda url, headers=None, data="[]": (
        real_patch(url, headers=headers, data=data)[0], None))
    results = register_regions(make_registrar(1), ["RegionOne", "RegionTwo"], hold_worker=True)
    assert all(r.ok for r in results), results
    assert client.images.gets == [IMAGE_ID, IMAGE_ID]  # the image read again after the PATCH


def test_a_batch_one_of_whose_locations_appeared_meanwhile_is_added_one_by_one(make_registrar, client) -> None:
    real_get = client.images.get

    def get_then_race(image_id):
        record = real_get(image_id)
        if not client.http_client.patches and not client.images.added:  # another writer adds one
            url = protocol.cascaded_url("RegionTwo", IMAGE_ID)
            locations = client.images.records[image_id]["locations"]
            client.images.records[image_id]["locations"] = [*locations, {"url": url, "metadata": {}}]
        return record

    client.images.get = get_then_race
    results = register_regions(make_registrar(1), ["RegionOne", "RegionTwo"], hold_worker=True)
    assert all(r.ok for r in results), results
    # The PATCH of both was refused as a whole; each was then added on its own.
    assert [len(ops) for _image, ops in client.http_client.patches] == [2]
    assert [url for _i, url, _m in client.images.added] == [
        protocol.cascaded_url(r, IMAGE_ID) for r in ("RegionOne", "RegionTwo")]
