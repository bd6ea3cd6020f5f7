"""glance-sync-proxy: a streaming reverse proxy in front of an unmodified glance-api.

For deployments that cannot edit glance's paste pipeline.  ``Forwarder`` is a WSGI
app that sends each request to ``[proxy] upstream_url`` — method, path, query,
end-to-end headers, and the body streamed as it arrives (Content-Length or
chunked) — and streams the answer back in 64 KiB pieces, so an image never sits
in memory.  ``make_app`` wraps it in the same ``SyncObserver`` the paste filter
uses, so the same requests make the same events.  ``ProxyServer`` runs it under
gunicorn (gthread worker) without a gunicorn config file.

Without keystonemiddleware in front of it, the proxy sees a token and no identity
headers: events carry the image's owner and visibility but no user or roles.

``X-Glance-Sync-Internal`` never reaches the upstream glance: ``SyncObserver``
checks it (a valid marker of our coordinator means no event) and removes it, and
``Forwarder`` drops it again should it ever run unobserved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import urllib3
from gunicorn.app.base import BaseApplication

from glance_proxy.middleware import SenderHolder, SyncObserver, load_internal_secret
from glancesync.protocol import INTERNAL_REQUEST_HEADER

LOG = logging.getLogger(__name__)

CHUNK = 64 * 1024
# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "proxy-connection"}
)  # fmt: skip
# Set by the proxy itself (Host: the upstream's) or meant for us only (the loop guard).
_NOT_FORWARDED = HOP_BY_HOP | {"host", INTERNAL_REQUEST_HEADER.lower()}
# An image upload or download may take many minutes; only connecting is bounded.
TIMEOUT = urllib3.Timeout(connect=10.0, read=None)


def _request_headers(environ: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
            if name.lower() not in _NOT_FORWARDED:
                headers[name] = value
    for key, name in (("CONTENT_TYPE", "Content-Type"), ("CONTENT_LENGTH", "Content-Length")):
        if environ.get(key):
            headers[name] = environ[key]
    if environ.get("HTTP_HOST"):
        headers["X-Forwarded-Host"] = environ["HTTP_HOST"]
    headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
    if environ.get("REMOTE_ADDR"):
        headers["X-Forwarded-For"] = environ["REMOTE_ADDR"]
    return headers


def _body(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


class _Response:
    """The upstream answer as a WSGI iterable; close() gives the connection back."""

    def __init__(self, resp: urllib3.BaseHTTPResponse) -> None:
        self.resp = resp

    def __iter__(self) -> Iterator[bytes]:
        yield from self.resp.stream(CHUNK, decode_content=False)

    def close(self) -> None:
        self.resp.release_conn()


class Forwarder:
    """WSGI app forwarding everything to ``upstream_url``."""

    def __init__(self, upstream_url: str, pool: urllib3.PoolManager | None = None) -> None:
        self.upstream = upstream_url.rstrip("/")
        self.pool = pool or urllib3.PoolManager(num_pools=4, maxsize=32, retries=False, timeout=TIMEOUT)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        url = self.upstream + environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            url += "?" + environ["QUERY_STRING"]
        method = environ["REQUEST_METHOD"]
        headers = _request_headers(environ)
        body: Any = None
        chunked = False
        if "Content-Length" in headers:
            body = _body(environ["wsgi.input"]) if headers["Content-Length"] != "0" else b""
        elif environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            body, chunked = _body(environ["wsgi.input"]), True
        try:
            resp = self.pool.urlopen(
                method, url, body=body, headers=headers, chunked=chunked, redirect=False,
                preload_content=False, decode_content=False, assert_same_host=False,
            )  # fmt: skip
        except urllib3.exceptions.HTTPError as exc:
            LOG.error("glance-sync-proxy: %s %s: upstream failed: %s", method, url, exc)
            start_response("502 Bad Gateway", [("Content-Type", "text/plain"), ("Content-Length", "20")])
            return [b"upstream unavailable"]
        out = [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP]
        start_response(f"{resp.status} {resp.reason or ''}".strip(), out)
        return _Response(resp)


def make_app(conf: Any) -> Any:
    """The proxy's WSGI app: forwarding, observed for image events.

    Emitting events is the proxy's only reason to exist, so it does not read
    ``sync_enabled`` (that option switches the filter inside glance-api).  Raises
    KeyLoadError for a ``sync_internal_secret_file`` that does not load.
    """
    secret = load_internal_secret(conf, strict=True)
    return SyncObserver(Forwarder(conf.proxy.upstream_url), SenderHolder(conf), secret)


class ProxyServer(BaseApplication):
    """gunicorn, configured in code: gthread workers, long timeout for image transfers."""

    def __init__(self, app: Any, bind: str, workers: int = 2, threads: int = 8, **extra: Any) -> None:
        self.app = app
        self.settings = {"bind": bind, "workers": workers, "worker_class": "gthread", "threads": threads,
                         "timeout": 3600, "graceful_timeout": 30, "keepalive": 5,
                         # gunicorn's runtime control socket is one fixed path per user:
                         # two proxies on a host would fight over it, and nothing here uses it.
                         "control_socket_disable": True, **extra}  # fmt: skip
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return self.app
