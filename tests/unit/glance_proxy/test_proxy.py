"""glance-sync-proxy as a real process (gunicorn) between a test client and a fake upstream."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgpack
import pytest
import urllib3

from tests.unit.glance_proxy.conftest import free_port
from tests.unit.glance_proxy.test_sender import Coordinator

IMG = "1b2c3d4e-0000-4000-8000-000000000001"
BIG = 8 * 1024 * 1024


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes, extra: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        body = self._body()
        self.seen.append({"path": self.path, "headers": dict(self.headers), "sha": hashlib.sha256(body).hexdigest()})
        self._answer(204, b"")

    def do_POST(self):
        self._body()
        self.seen.append({"path": self.path, "headers": dict(self.headers)})
        body = json.dumps({"id": IMG, "owner": "p1", "visibility": "private"}).encode()
        self._answer(201, body, {"Content-Type": "application/json", "X-Upstream": "yes"})

    def do_GET(self):
        self.seen.append({"path": self.path, "headers": dict(self.headers)})
        self._answer(200, b"z" * BIG, {"Content-Type": "application/octet-stream"})


@pytest.fixture
def upstream():
    Upstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(tmp_path, upstream):
    port, sync_port = free_port(), free_port()
    conf = tmp_path / "proxy.conf"
    conf.write_text(
        f"[DEFAULT]\nsync_server_host = 127.0.0.1\nsync_server_port = {sync_port}\n"
        f"[proxy]\nlisten_port = {port}\nupstream_url = http://127.0.0.1:{upstream.server_port}\n"
        f"spool_dir = {tmp_path / 'spool'}\n"
    )
    log = open(tmp_path / "proxy.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "glance_proxy.cmd", "--config-file", str(conf)], stdout=log, stderr=log,
        cwd=Path(__file__).parents[3],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url + "/versions", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError((tmp_path / "proxy.log").read_text()) from None
            time.sleep(0.2)
    yield url, sync_port
    proc.terminate()
    proc.wait(10)
    log.close()


def test_get_streams_large_body_identically(proxy):
    url, _ = proxy
    resp = urllib3.request("GET", f"{url}/v2/images/{IMG}/file?x=1", preload_content=False)
    got = hashlib.sha256()
    for chunk in resp.stream(65536):
        got.update(chunk)
    assert resp.status == 200
    assert got.hexdigest() == hashlib.sha256(b"z" * BIG).hexdigest()
    assert Upstream.seen[-1]["path"] == f"/v2/images/{IMG}/file?x=1"


@pytest.mark.parametrize("chunked", [True, False])
def test_upload_body_reaches_upstream_intact(proxy, chunked):
    url, _ = proxy
    data = bytes(range(256)) * 20000
    body = (data[i : i + 100_000] for i in range(0, len(data), 100_000)) if chunked else data
    resp = urllib3.PoolManager().urlopen(
        "PUT", f"{url}/v2/images/{IMG}/file", body=body, chunked=chunked,
        headers={"Content-Type": "application/octet-stream", "Connection": "keep-alive", "X-Custom": "kept"},
    )  # fmt: skip
    assert resp.status == 204
    seen = Upstream.seen[-1]
    assert seen["sha"] == hashlib.sha256(data).hexdigest()
    assert seen["headers"]["X-Custom"] == "kept"
    assert seen["headers"].get("X-Forwarded-Proto") == "http"


def test_create_through_proxy_makes_event(proxy):
    url, sync_port = proxy
    coord = Coordinator(sync_port)
    try:
        resp = urllib3.request("POST", f"{url}/v2/images", body=b"{}", headers={"X-User-Id": "u9"})
        assert resp.status == 201
        assert resp.headers["X-Upstream"] == "yes"
        assert json.loads(resp.data)["id"] == IMG
        ident, msg = coord.recv(timeout=10)
        assert (msg.body["kind"], msg.body["image_id"]) == ("created", IMG)
        assert msg.body["context"]["user_id"] == "u9"
        coord.ack(ident, msg)
    finally:
        coord.close()


def test_unreachable_upstream_is_502(tmp_path):
    from glance_proxy.proxy import Forwarder

    app = Forwarder(f"http://127.0.0.1:{free_port()}")
    statuses = []
    body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/images"}, lambda s, h: statuses.append(s))
    assert statuses == ["502 Bad Gateway"] and b"".join(body) == b"upstream unavailable"


def test_port_in_use_is_one_line_and_non_zero_exit(tmp_path):
    import socket as socket_mod

    with socket_mod.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "proxy.conf"
        conf.write_text(
            f"[proxy]\nlisten_host = 127.0.0.1\nlisten_port = {port}\nupstream_url = http://127.0.0.1:1\n"
            f"spool_dir = {tmp_path / 'spool'}\n"
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "glance_proxy.cmd", "--config-file", str(conf)], capture_output=True, text=True,
            cwd=Path(__file__).parents[3], timeout=30,
        )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout and time.monotonic() - started < 10


def test_the_loop_guard_header_is_never_forwarded(upstream):
    from glance_proxy.proxy import Forwarder

    app = Forwarder(f"http://127.0.0.1:{upstream.server_port}")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/images", "HTTP_X_GLANCE_SYNC_INTERNAL": "1",
               "HTTP_X_OTHER": "kept", "wsgi.input": None}
    statuses = []
    result = app(environ, lambda s, h: statuses.append(s))
    b"".join(result)
    result.close()
    assert statuses == ["200 OK"]
    headers = {k.lower(): v for k, v in Upstream.seen[-1]["headers"].items()}
    assert "x-glance-sync-internal" not in headers and headers["x-other"] == "kept"


def test_a_readable_secret_file_stops_the_proxy_in_one_line(tmp_path):
    from glancesync import marker

    secret = tmp_path / "internal.secret"
    marker.write_secret(str(secret))
    secret.chmod(0o644)
    conf = tmp_path / "proxy.conf"
    conf.write_text(
        f"[DEFAULT]\nsync_internal_secret_file = {secret}\n"
        f"[proxy]\nlisten_host = 127.0.0.1\nlisten_port = {free_port()}\nupstream_url = http://127.0.0.1:1\n"
        f"spool_dir = {tmp_path / 'spool'}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "glance_proxy.cmd", "--config-file", str(conf)], capture_output=True, text=True,
        cwd=Path(__file__).parents[3], timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert str(secret) in last and "chmod 600" in last, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert secret.read_text().strip() not in done.stderr + done.stdout


_GUNICORN_WORKER = """
import functools, sys
from oslo_config import cfg
from glancesync import opts
from glance_proxy.middleware import SenderHolder, SyncObserver
from glance_proxy.proxy import ProxyServer
from glance_proxy.sender import EventSender
conf = cfg.ConfigOpts()
opts.register_filter_opts(conf)
conf([], default_config_files=[])
conf.set_override("sync_server_host", "127.0.0.1")
conf.set_override("sync_server_port", int(sys.argv[2]))
conf.set_override("spool_dir", sys.argv[1], group="proxy")

def glance(environ, start_response):
    start_response("204 No Content", [("Content-Length", "0")])
    return [b""]

# The first event waits for an ack that never comes: the ones after it stay queued in memory.
holder = SenderHolder(conf, functools.partial(EventSender, ack_timeout=600))
ProxyServer(SyncObserver(glance, holder), "127.0.0.1:" + sys.argv[3], workers=1, threads=2).run()
"""


def test_sigterm_to_gunicorn_spools_the_events_its_worker_still_held_in_memory(tmp_path):
    """The filter's and the proxy's way out: gunicorn's graceful stop of a worker, then atexit."""
    spool, sync_port, port = tmp_path / "spool", free_port(), free_port()
    coord = Coordinator(sync_port)
    log = open(tmp_path / "gunicorn.log", "wb")
    root = Path(__file__).parents[3]
    proc = subprocess.Popen(
        [sys.executable, "-c", _GUNICORN_WORKER, str(spool), str(sync_port), str(port)], stdout=log, stderr=log,
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    ids = [f"1b2c3d4e-0000-4000-8000-{n:012d}" for n in range(1, 6)]
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                assert urllib3.request("DELETE", f"{url}/v2/images/{ids[0]}", retries=False).status == 204
                break
            except urllib3.exceptions.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.2)
        _, msg = coord.recv(timeout=30)
        assert msg.body["image_id"] == ids[0]  # in flight, never acked
        for image_id in ids[1:]:
            assert urllib3.request("DELETE", f"{url}/v2/images/{image_id}").status == 204
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "gunicorn.log").read_text()
    finally:
        proc.kill()
        proc.wait()
        log.close()
        coord.close()
    files = sorted(spool.glob("*/*.evt"))
    assert [msgpack.unpackb(f.read_bytes())["image_id"] for f in files] == ids
