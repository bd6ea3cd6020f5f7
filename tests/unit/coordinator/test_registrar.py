"""The registrar: the regional image read and verified before registration, idempotent location add, endpoints."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coordinator import cmd
from coordinator.journal import EventRow, TaskRow
from coordinator.registrar import FetchResult, Registrar, TaskResult, cascading_endpoint
from glancesync import glance, marker, protocol, storemap
from glancesync.exceptions import ConfigError
from glancesync.states import SyncState
from glancesync.storemap import GlanceEndpoint

from .conftest import IMAGE_ID, FakeClient, image_record, make_conf


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
def registrar(client, regionals):
    reg = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=regional_factory(regionals))
    yield reg
    reg.shutdown()


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


def test_regional_clients_are_built_lazily_once_per_region_and_thread(client, regionals) -> None:
    built: list[str] = []
    registrar = Registrar(lambda: client, 1, "http://cascading",
                          regional_client_factory=regional_factory(regionals, built))
    try:
        assert built == []
        for n, region in enumerate(["RegionOne", "RegionTwo", "RegionOne"]):
            registrar.register(dataclasses.replace(task(report=good_report()), task_id=f"t{n}", region=region))
        assert all(r.ok for r in wait_results(registrar, 3))
    finally:
        registrar.shutdown()
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
    client.images.records.clear()
    registrar.fetch(EventRow("e1", "updated", IMAGE_ID, {}, 0.0))
    result = wait_result(registrar)
    assert result.image is None and result.error is None


def _secret_file(tmp_path, mode: int = 0o600):
    path = tmp_path / "internal.secret"
    marker.write_secret(str(path))
    os.chmod(path, mode)
    return path


def test_cascading_endpoint_carries_the_secret_not_a_bare_header(tmp_path, db_url, store_yaml) -> None:
    secret_file = _secret_file(tmp_path)
    conf = make_conf(tmp_path, db_url, store_yaml, DEFAULT={"sync_internal_secret_file": secret_file},
                     cascading_glance={"identity_headers": f"{protocol.INTERNAL_REQUEST_HEADER}:1,X-Roles:admin"})
    endpoint = cascading_endpoint(conf, storemap.load(str(store_yaml)))
    assert endpoint.url == "http://127.0.0.1:1" and endpoint.auth["auth_type"] == "none"
    assert endpoint.internal_secret == secret_file.read_bytes().strip()
    # No fixed header value is ever sent, even one written in identity_headers.
    assert endpoint.headers == {"X-Roles": "admin"}
    assert endpoint.internal_secret.decode() not in repr(endpoint)


def test_cascading_endpoint_without_a_secret_sends_no_marker(conf, stores, caplog) -> None:
    endpoint = cascading_endpoint(conf, stores)
    assert endpoint.internal_secret is None
    assert protocol.INTERNAL_REQUEST_HEADER not in endpoint.headers
    assert "sync_internal_secret_file is not set" in caplog.text


def test_a_readable_secret_file_stops_the_coordinator(tmp_path, db_url, store_yaml, capsys) -> None:
    secret_file = _secret_file(tmp_path, 0o644)
    make_conf(tmp_path, db_url, store_yaml, DEFAULT={"sync_internal_secret_file": secret_file})
    assert cmd.main(["--config-file", str(tmp_path / "coordinator.conf")]) == 1
    captured = capsys.readouterr()
    assert "chmod 600" in captured.out + captured.err
    assert secret_file.read_text().strip() not in captured.out + captured.err


def test_cascading_glance_password_auth_keeps_every_option(tmp_path, db_url, store_yaml) -> None:
    """[cascading_glance] keystoneauth1 password options all reach the session, the URL from the catalog."""
    conf = make_conf(tmp_path, db_url, store_yaml,
                     cascading_glance={"auth_type": "password", "auth_url": "http://127.0.0.1:5000/v3",
                                       "username": "glance-sync", "password": "s3cret",
                                       "project_name": "service", "user_domain_name": "Default",
                                       "project_domain_name": "Default", "region_name": "Cascading"})
    conf.set_override("cascading_endpoint_url", None)
    endpoint = cascading_endpoint(conf, None)
    assert endpoint.url is None and endpoint.region_name == "Cascading"
    assert endpoint.auth == {"auth_type": "password", "auth_url": "http://127.0.0.1:5000/v3",
                             "username": "glance-sync", "password": "s3cret", "project_name": "service",
                             "user_domain_name": "Default", "project_domain_name": "Default"}
    assert "s3cret" not in repr(endpoint)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None]] = []

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get(protocol.INTERNAL_REQUEST_HEADER)))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()
    server.server_close()


def test_every_request_of_the_session_is_signed_for_its_own_method_and_path(recorder) -> None:
    url, seen = recorder
    secret = b"s" * 40
    sess = glance.make_session(GlanceEndpoint(url=url, internal_secret=secret))
    sess.get(f"{url}/v2/images?limit=2&marker=a%20b")
    sess.patch(f"{url}/v2/images/{IMAGE_ID}", json=[])
    sess.delete(f"{url}/image/v2/images/{IMAGE_ID}/tags/a%2Fb")
    assert [(m, p) for m, p, _ in seen] == [
        ("GET", "/v2/images?limit=2&marker=a%20b"), ("PATCH", f"/v2/images/{IMAGE_ID}"),
        ("DELETE", f"/image/v2/images/{IMAGE_ID}/tags/a%2Fb")]
    now = time.time()
    for method, path, value in seen:
        target = marker.url_target(url + path)
        assert marker.check(secret, value, method, target, now) == (True, "valid"), (method, path)
    # A marker is bound to its request: another path or method does not check.
    _, _, first = seen[0]
    assert not marker.check(secret, first, "GET", marker.url_target(f"{url}/v2/images"), now)[0]
    assert not marker.check(secret, first, "DELETE", marker.url_target(f"{url}{seen[0][1]}"), now)[0]


def test_only_requests_to_the_glance_endpoint_are_signed(recorder) -> None:
    url, seen = recorder
    sess = glance.make_session(GlanceEndpoint(url=f"{url}/image/", internal_secret=b"s" * 40))
    sess.get(f"{url}/identity/v3")  # e.g. keystone on the same session
    sess.get(f"{url}/image/v2/images")
    assert [(p, v is not None) for _, p, v in seen] == [("/identity/v3", False), ("/image/v2/images", True)]


def test_a_session_without_a_secret_sends_no_marker(recorder) -> None:
    url, seen = recorder
    glance.make_session(GlanceEndpoint(url=url)).get(f"{url}/v2/images")
    assert seen == [("GET", "/v2/images", None)]


def test_concurrent_registrations_of_one_image_keep_every_location(client, regionals) -> None:
    """Glance rewrites the whole location set per PATCH: adds to one image must not overlap."""
    client.images.write_delay = 0.05
    registrar = Registrar(lambda: client, 4, "http://cascading", regional_client_factory=regional_factory(regionals))
    try:
        for n, region in enumerate(["RegionOne", "RegionTwo", "RegionThree"]):
            row = task(report=good_report())
            registrar.register(dataclasses.replace(row, task_id=f"t{n}", region=region))
        results = wait_results(registrar, 3)
    finally:
        registrar.shutdown()
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
        client, regionals) -> None:
    regions = ["RegionOne", "RegionTwo", "RegionThree"]
    registrar = Registrar(lambda: client, 1, "http://cascading", regional_client_factory=regional_factory(regionals))
    hold = threading.Event()
    try:
        registrar.pool.submit(hold.wait)  # the one worker is busy: the three wait for the same job
        for n, region in enumerate(regions):
            registrar.register(dataclasses.replace(task(report=good_report()), task_id=f"t{n}", region=region))
        hold.set()
        results = wait_results(registrar, 3)
    finally:
        registrar.shutdown()
    assert all(r.ok for r in results), results
    assert [len(ops) for _image, ops in client.http_client.patches] == [3]  # one PATCH, every region
    assert client.images.added == []
    assert client.images.gets == [IMAGE_ID, IMAGE_ID]  # one read before, one after
    urls = {loc["url"] for loc in client.images.records[IMAGE_ID]["locations"]}
    assert {protocol.cascaded_url(r, IMAGE_ID) for r in regions} <= urls


def test_a_batch_one_of_whose_locations_appeared_meanwhile_is_added_one_by_one(client, regionals) -> None:
    registrar = Registrar(lambda: client, 1, "http://cascading", regional_client_factory=regional_factory(regionals))
    real_get = client.images.get

    def get_then_race(image_id):
        record = real_get(image_id)
        if not client.http_client.patches and not client.images.added:  # another writer adds one
            url = protocol.cascaded_url("RegionTwo", IMAGE_ID)
            locations = client.images.records[image_id]["locations"]
            client.images.records[image_id]["locations"] = [*locations, {"url": url, "metadata": {}}]
        return record

    client.images.get = get_then_race
    hold = threading.Event()
    try:
        registrar.pool.submit(hold.wait)
        for n, region in enumerate(["RegionOne", "RegionTwo"]):
            registrar.register(dataclasses.replace(task(report=good_report()), task_id=f"t{n}", region=region))
        hold.set()
        results = wait_results(registrar, 2)
    finally:
        registrar.shutdown()
    assert all(r.ok for r in results), results
    # The PATCH of both was refused as a whole; each was then added on its own.
    assert [len(ops) for _image, ops in client.http_client.patches] == [2]
    assert [url for _i, url, _m in client.images.added] == [
        protocol.cascaded_url(r, IMAGE_ID) for r in ("RegionOne", "RegionTwo")]


def test_a_catalog_endpoint_never_signs_keystone_requests(recorder) -> None:
    """Without a fixed url every glance URL is signed, but the token and discovery calls are not."""
    url, seen = recorder
    sess = glance.make_session(GlanceEndpoint(
        url="", internal_secret=b"s" * 40,
        auth={"auth_type": "none", "auth_url": f"{url}/v3"}))
    sess.get(f"{url}/v3/auth/tokens")
    sess.get(f"{url}/v3")
    sess.get(f"{url}/")
    sess.get(f"{url}/image/v2/images")
    sess.get(f"{url}/v2/images")
    assert [(p, v is not None) for _, p, v in seen] == [
        ("/v3/auth/tokens", False), ("/v3", False), ("/", False), ("/image/v2/images", True), ("/v2/images", True)]
