"""glance sessions honour the environment's proxies and CA bundle, reading it once per host (httpenv.py).

Real keystoneauth1 sessions from ``glance.make_session`` and real HTTP servers on 127.0.0.1:
one plays an HTTP proxy (it sees the absolute URL of what it relays), one a glance.
"""

from __future__ import annotations

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from glancesync import glance
from glancesync.storemap import GlanceEndpoint

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
FAR = "http://glance.invalid:9292"  # reachable only through the proxy


class _Seen(BaseHTTPRequestHandler):
    """Answers 204 to any GET and keeps its target: absolute when the request came as to a proxy."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append(self.path)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def servers():
    """(proxy, glance): each a (url, the targets it was asked for)."""
    made = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Seen)
        server.seen = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made.append(server)
    yield [(f"http://127.0.0.1:{s.server_address[1]}", s.seen) for s in made]
    for server in made:
        server.shutdown()
        server.server_close()


@pytest.fixture
def environment(monkeypatch):
    """No proxy variable of the machine's; the test sets its own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "localhost,127.0.0.1"])
def test_requests_go_through_the_environments_proxy_except_to_no_proxy_hosts(servers, environment,
                                                                               no_proxy) -> None:
    (proxy, relayed), (near, direct) = servers
    environment.setenv("HTTP_PROXY", proxy)
    environment.setenv("NO_PROXY", no_proxy)
    far, local = glance.make_session(GlanceEndpoint(url=FAR)), glance.make_session(GlanceEndpoint(url=near))
    for _ in range(2):
        assert far.get(f"{FAR}/v2/images").status_code == 204
        assert local.get(f"{near}/v2/images").status_code == 204
    assert relayed == [f"{FAR}/v2/images"] * 2 and direct == ["/v2/images"] * 2


def test_the_environment_is_read_once_per_host_and_no_netrc_is_looked_for(servers, environment,
                                                                         monkeypatch) -> None:
    (proxy, relayed), (near, direct) = servers
    environment.setenv("http_proxy", proxy)
    scans = []
    real_scan = urllib.request.getproxies_environment
    monkeypatch.setattr(urllib.request, "getproxies_environment", lambda: scans.append(1) or real_scan())
    monkeypatch.setattr(requests.sessions, "get_netrc_auth", lambda *_a, **_k: pytest.fail(".netrc looked up"))
    sess = glance.make_session(GlanceEndpoint(url=FAR))
    sess.get(f"{FAR}/v2/images")
    once = len(scans)
    for _ in range(5):
        sess.get(f"{FAR}/v2/images")
    assert 0 < once and len(scans) == once and len(relayed) == 6


def test_the_ca_bundle_of_the_environment_replaces_only_the_default_verify(environment, tmp_path) -> None:
    bundle = tmp_path / "ca.pem"
    environment.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    verifying = glance.make_session(GlanceEndpoint(url=FAR)).session
    assert verifying.merge_environment_settings(f"{FAR}/v2", {}, None, True, None)["verify"] == str(bundle)
    own = str(tmp_path / "own.pem")
    assert verifying.merge_environment_settings(f"{FAR}/v2", {}, None, own, None)["verify"] == own
    assert verifying.merge_environment_settings(f"{FAR}/v2", {}, None, False, None)["verify"] is False
