"""The paste filter and the cascaded:// driver inside a real glance-api 33 (tests/harness).

One regional glance (plain) and one cascading glance with our filter and driver,
both real gunicorn processes on 127.0.0.1; the test plays the coordinator's event
socket with a zmq ROUTER.  Checks: every image change makes the right event, the
loop-guard marker of the coordinator makes none while a client's bare, forged or stale
one changes nothing, a regional ``cascaded://`` location is accepted
(get_size), the image is served through the driver once its file location is gone
(get), and deleting the cascading image returns at once (delete).
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import subprocess
import sys
import time

import pytest
import yaml

from glancesync import marker, protocol
from tests.harness import IDENTITY_HEADERS, GlanceServer, free_port
from tests.harness.glance import admin_client, admin_session, signed_client
from tests.harness.procs import child_pids
from tests.unit.glance_proxy.test_sender import Coordinator

DATA = os.urandom(3 * 1024 * 1024 + 17)
IMG = "5d9c0c1e-7a52-4b4e-9d1a-0c2f3e4a5b60"


@pytest.fixture(scope="module")
def glances(tmp_path_factory):
    base = tmp_path_factory.mktemp("proxyfilter")
    region = GlanceServer("RegionA", base / "RegionA", template_dir=base / "template").start()
    store_yaml = base / "glance_store.yaml"
    store_yaml.write_text(yaml.safe_dump({
        "cascading": {"store": {"host": "127.0.0.1", "user": "x", "private_key_file": "/k",
                                "known_hosts_file": "/kh", "store_dir": "/srv"}},
        "regions": {"RegionA": {"glance": {"url": region.url, "headers": dict(IDENTITY_HEADERS)},
                                "work_dir": str(base / "work")}},
    }))  # fmt: skip
    sync_port = free_port()
    marker.write_secret(str(base / "internal.secret"))
    cascading = GlanceServer(
        "cascading", base / "cascading", template_dir=base / "template", sync_filter=True,
        sync_server_port=sync_port, cascaded_store=True, store_config=store_yaml,
        internal_secret_file=base / "internal.secret",
    ).start()  # fmt: skip
    coord = Coordinator(sync_port)
    try:
        yield region, cascading, coord
    finally:
        coord.close()
        cascading.stop()
        region.stop()


def next_event(coord: Coordinator, timeout: float = 15.0) -> dict:
    ident, msg = coord.recv(timeout)
    coord.ack(ident, msg)
    return msg.body


def no_event(coord: Coordinator, wait: float = 1.5) -> None:
    assert not coord.sock.poll(int(wait * 1000)), "an event was sent"


def test_events_locations_and_download_through_driver(glances):
    region, cascading, coord = glances
    client = cascading.client()

    client.images.create(id=IMG, name="cirros", disk_format="raw", container_format="bare")
    created = next_event(coord)
    assert (created["kind"], created["image_id"]) == ("created", IMG)
    assert created["image"]["name"] == "cirros"
    assert created["context"]["roles"] == IDENTITY_HEADERS["X-Roles"].split(",")

    client.images.upload(IMG, io.BytesIO(DATA))  # sent chunked by glanceclient
    assert next_event(coord)["kind"] == "uploaded"
    assert client.images.get(IMG)["status"] == "active"

    client.images.update(IMG, name="cirros-2", hw_disk_bus="scsi")
    updated = next_event(coord)
    assert updated["kind"] == "updated"
    assert sorted(updated["changes"]) == ["hw_disk_bus", "name"]
    assert updated["image"]["name"] == "cirros-2"

    client.image_tags.update(IMG, "gold")
    assert next_event(coord)["kind"] == "tags_changed"

    # The regional copy (what an agent would upload), then the coordinator's own
    # location registration: signed with the shared secret, so no event.
    rclient = region.client()
    rclient.images.create(id=IMG, name="cirros", disk_format="raw", container_format="bare")
    rclient.images.upload(IMG, io.BytesIO(DATA))
    internal = signed_client(cascading.url, cascading.internal_secret_file)
    internal.images.add_location(IMG, protocol.cascaded_url("RegionA", IMG), {"region": "RegionA"})
    no_event(coord)
    urls = [loc["url"] for loc in client.images.get(IMG)["locations"]]
    assert protocol.cascaded_url("RegionA", IMG) in urls

    # Drop the file location: from now on glance reads the image through our driver.
    file_index = next(i for i, u in enumerate(urls) if u.startswith("file://"))
    resp = cascading.session().patch(
        f"{cascading.url}/v2/images/{IMG}", json=[{"op": "remove", "path": f"/locations/{file_index}"}],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"}, raise_exc=False,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text + cascading.log_tail()
    assert next_event(coord)["kind"] == "locations_changed"
    body = b"".join(client.images.data(IMG))
    assert hashlib.sha256(body).digest() == hashlib.sha256(DATA).digest()

    client.images.deactivate(IMG)
    assert next_event(coord)["kind"] == "deactivated"
    client.images.reactivate(IMG)
    assert next_event(coord)["kind"] == "reactivated"

    start = time.monotonic()
    client.images.delete(IMG)
    assert time.monotonic() - start < 5
    assert next_event(coord)["kind"] == "deleted"
    # The driver's delete() left the regional copy alone (the coordinator's job).
    assert rclient.images.get(IMG)["status"] == "active"


def test_failed_requests_and_reads_make_no_event(glances):
    _, cascading, coord = glances
    client = cascading.client()
    list(client.images.list())
    resp = cascading.session().delete(f"{cascading.url}/v2/images/{'0' * 32}", raise_exc=False)
    assert resp.status_code == 404
    no_event(coord)


def forged_markers(method: str, path: str, secret_file) -> dict[str, str]:
    """Bare, forged (another secret) and stale (the right secret, an hour old) markers for one request."""
    target = marker.request_target(path.encode())
    secret = marker.load_secret(str(secret_file))
    return {
        "bare": "1",
        "forged": marker.sign(b"guessed-" * 8, method, target, time.time()),
        "stale": marker.sign(secret, method, target, time.time() - 3600),
        "other request": marker.sign(secret, "DELETE", target, time.time()),
    }


def test_a_client_loop_guard_header_never_switches_events_off(glances):
    """Through the filter: bare, forged and stale markers are ignored, and glance never sees them."""
    _, cascading, coord = glances
    image = cascading.client().images.create(name="guarded", disk_format="raw", container_format="bare")
    assert next_event(coord)["kind"] == "created"
    path = f"/v2/images/{image['id']}"
    for label, value in forged_markers("PATCH", path, cascading.internal_secret_file).items():
        client = admin_client(cascading.url, **{protocol.INTERNAL_REQUEST_HEADER: value})
        client.images.update(image["id"], name=f"renamed {label}")
        updated = next_event(coord)
        assert (updated["kind"], updated["image_id"], updated["changes"]) == ("updated", image["id"], ["name"]), label
    bare = admin_client(cascading.url, **{protocol.INTERNAL_REQUEST_HEADER: "1"})
    bare.images.delete(image["id"])
    assert next_event(coord)["kind"] == "deleted"


def test_standalone_proxy_trusts_only_the_coordinators_marker(glances, tmp_path):
    """glance-sync-proxy in front of a plain glance: only a validly signed request makes no event."""
    from tests.harness import ServiceProcess, wait_tcp
    from tests.harness.glance import venv_bin

    region, _, _ = glances
    port, sync_port = free_port(), free_port()
    secret_file = tmp_path / "internal.secret"
    marker.write_secret(str(secret_file))
    conf = tmp_path / "proxy.conf"
    conf.write_text(
        f"[DEFAULT]\nsync_server_host = 127.0.0.1\nsync_server_port = {sync_port}\n"
        f"sync_internal_secret_file = {secret_file}\n"
        f"[proxy]\nlisten_host = 127.0.0.1\nlisten_port = {port}\nupstream_url = {region.url}\n"
        f"spool_dir = {tmp_path / 'spool'}\n"
    )
    coord = Coordinator(sync_port)
    proxy = ServiceProcess("glance-sync-proxy", [venv_bin("glance-sync-proxy"), "--config-file", str(conf)],
                           tmp_path / "proxy.log").start()
    try:
        wait_tcp("127.0.0.1", port, 30)
        url = f"http://127.0.0.1:{port}"
        image = admin_client(url).images.create(name="proxied", disk_format="raw", container_format="bare")
        assert next_event(coord)["kind"] == "created"
        path = f"/v2/images/{image['id']}"
        for label, value in forged_markers("PATCH", path, secret_file).items():
            admin_client(url, **{protocol.INTERNAL_REQUEST_HEADER: value}).images.update(image["id"], name=label)
            updated = next_event(coord)
            assert (updated["kind"], updated["changes"]) == ("updated", ["name"]), label + proxy.log_tail()
        # The coordinator's own calls, signed with the shared secret: no event.
        signed = signed_client(url, secret_file)
        signed.images.update(image["id"], name="by the coordinator")
        signed.image_tags.update(image["id"], "internal")
        record = region.client().images.get(image["id"])
        assert record["name"] == "by the coordinator" and record["tags"] == ["internal"]
        no_event(coord)
        admin_client(url).images.delete(image["id"])
        assert next_event(coord)["kind"] == "deleted"
    finally:
        proxy.stop()
        coord.close()


def test_chunked_patch_keeps_its_changes(glances):
    """A PATCH sent with Transfer-Encoding: chunked still names the properties it changed."""
    _, cascading, coord = glances
    client = cascading.client()
    image = client.images.create(name="chunky", disk_format="raw", container_format="bare")
    assert next_event(coord)["kind"] == "created"
    patch = b'[{"op": "replace", "path": "/name", "value": "chunky-2"}, ' \
            b'{"op": "add", "path": "/hw_scsi_model", "value": "virtio-scsi"}]'

    def pieces():
        for start in range(0, len(patch), 16):
            yield patch[start:start + 16]

    resp = cascading.session().patch(
        f"{cascading.url}/v2/images/{image['id']}", data=pieces(),
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"}, raise_exc=False,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text + cascading.log_tail()
    assert client.images.get(image["id"])["name"] == "chunky-2"
    updated = next_event(coord)
    assert updated["kind"] == "updated" and updated["changes"] == ["name", "hw_scsi_model"]
    client.images.delete(image["id"])
    assert next_event(coord)["kind"] == "deleted"


def _kib(pid: int, field: str) -> int | None:
    """``field`` of /proc/PID/status in KiB (0 when absent); None once the process is gone.

    A worker can be reaped at any moment: between the open and the read of its /proc
    file the read fails with ESRCH (ProcessLookupError), not FileNotFoundError.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            text = status.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def test_a_worker_reaped_between_the_open_and_the_read_of_its_status_is_gone(monkeypatch):
    """_kib's race, for real: the process is reaped after the open, so the read fails with ESRCH."""
    worker = subprocess.Popen(["sleep", "60"])

    def open_then_reap(path, *args, **kwargs):
        handle = builtins.open(path, *args, **kwargs)
        worker.kill()
        worker.wait()
        return handle

    assert _kib(worker.pid, "VmRSS") > 0
    monkeypatch.setattr(sys.modules[__name__], "open", open_then_reap, raising=False)
    assert _kib(worker.pid, "VmRSS") is None
    monkeypatch.undo()
    assert _kib(worker.pid, "VmRSS") is None  # reaped before the open: FileNotFoundError


def test_standalone_proxy_streams_a_large_image_in_flat_memory(glances, tmp_path):
    """200 MiB up and down through the real glance-sync-proxy: its workers' peak RSS barely moves."""
    from tests.harness import ServiceProcess, wait_tcp
    from tests.harness.glance import venv_bin

    region, _, _ = glances
    port = free_port()
    conf = tmp_path / "proxy.conf"
    conf.write_text(
        f"[DEFAULT]\nsync_server_host = 127.0.0.1\nsync_server_port = {free_port()}\n"
        f"[proxy]\nlisten_host = 127.0.0.1\nlisten_port = {port}\nupstream_url = {region.url}\n"
        f"spool_dir = {tmp_path / 'spool'}\n"
    )
    proxy = ServiceProcess("glance-sync-proxy", [venv_bin("glance-sync-proxy"), "--config-file", str(conf)],
                           tmp_path / "proxy.log").start()
    try:
        wait_tcp("127.0.0.1", port, 30)
        url = f"http://127.0.0.1:{port}"
        sess = admin_session(url)
        json_headers = {"Content-Type": "application/json"}
        # Warm every worker (imports, first event) before the baseline.
        for _ in range(6):
            assert sess.get(f"{url}/v2/images", raise_exc=False).status_code == 200
        image = sess.post(f"{url}/v2/images", json={"disk_format": "raw", "container_format": "bare"},
                          headers=json_headers).json()
        # A pid listed but reaped before its read is no worker to measure.
        baseline = {pid: rss for pid in child_pids(proxy.pid) if (rss := _kib(pid, "VmRSS")) is not None}
        assert baseline, proxy.log_tail()
        size, piece = 200 * 1024 * 1024, os.urandom(1024 * 1024)
        digest = hashlib.md5()

        def body():
            for _ in range(size // len(piece)):
                digest.update(piece)
                yield piece

        started = time.monotonic()
        resp = sess.put(f"{url}/v2/images/{image['id']}/file", data=body(),
                        headers={"Content-Type": "application/octet-stream"}, raise_exc=False)
        up = time.monotonic() - started
        assert resp.status_code == 204, resp.text + proxy.log_tail()
        record = sess.get(f"{url}/v2/images/{image['id']}").json()
        assert record["size"] == size and record["checksum"] == digest.hexdigest()
        started, got, down_md5 = time.monotonic(), 0, hashlib.md5()
        with sess.get(f"{url}/v2/images/{image['id']}/file", stream=True) as download:
            for chunk in download.iter_content(1024 * 1024):
                got += len(chunk)
                down_md5.update(chunk)
        down = time.monotonic() - started
        assert got == size and down_md5.hexdigest() == digest.hexdigest()
        peaks = {pid: _kib(pid, "VmHWM") for pid in baseline}
        gone = [pid for pid, peak in peaks.items() if peak is None]
        assert not gone, f"proxy worker(s) {gone} ended during the transfer\n" + proxy.log_tail()
        growth = {pid: (peak - baseline[pid]) / 1024 for pid, peak in peaks.items()}
        print(f"\nproxy 200 MiB: upload {up:.1f} s, download {down:.1f} s; worker peak RSS growth MiB: "
              + ", ".join(f"{g:.1f}" for g in growth.values()))
        assert max(growth.values()) < 100, growth
        sess.delete(f"{url}/v2/images/{image['id']}")
    finally:
        proxy.stop()
