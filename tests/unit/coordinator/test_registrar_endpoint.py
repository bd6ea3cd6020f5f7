"""The cascading endpoint the registrar talks to: its credentials, and the loop-guard marker signed on
every request of its session (doc/internal-marker.md)."""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coordinator import cmd
from coordinator.registrar import cascading_endpoint
from glancesync import glance, marker, protocol, storemap
from glancesync.storemap import GlanceEndpoint

from .conftest import IMAGE_ID, make_conf


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
