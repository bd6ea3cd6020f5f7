"""The paste filter with a fake glance app: identical responses, streaming, errors swallowed."""

from __future__ import annotations

import io
import json

import pytest
from oslo_config import cfg
from webob import Request

from glance_proxy import middleware
from glance_proxy.middleware import SenderHolder, SyncObserver

IMG = "1b2c3d4e-0000-4000-8000-000000000001"
IMAGE = {"id": IMG, "owner": "p1", "visibility": "private", "name": "n"}
IDENTITY = {"X-User-Id": "u1", "X-Project-Id": "p1", "X-Roles": "admin"}


class FakeSender:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict] = []
        self.fail = fail

    def submit(self, event: dict) -> bool:
        if self.fail:
            raise RuntimeError("sender exploded")
        self.events.append(event)
        return True

    def start(self) -> FakeSender:
        return self


class FakeGlance:
    """Answers like glance: JSON for create/PATCH, 204 for the rest; records what it read."""

    def __init__(self, status: str = "201 Created", body: bytes | None = None, chunks: int = 1) -> None:
        self.status = status
        self.body = json.dumps(IMAGE).encode() if body is None else body
        self.chunks = chunks
        self.read: bytes = b""
        self.reads: list[int] = []
        self.closed = False

    def __call__(self, environ, start_response):
        stream = environ["wsgi.input"]
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            self.reads.append(len(chunk))
            self.read += chunk if len(self.read) < 1024 else b""
        start_response(self.status, [("Content-Type", "application/json"), ("X-Openstack-Request-Id", "req-1")])
        step = max(1, len(self.body) // self.chunks)
        parts = [self.body[i : i + step] for i in range(0, len(self.body), step)]
        return _Closing(parts, self)


class _Closing(list):
    def __init__(self, parts, app):
        super().__init__(parts)
        self.app = app

    def close(self):
        self.app.closed = True


def observed(app, sender=None):
    holder = SenderHolder(conf=None, factory=lambda conf: sender or FakeSender())
    return SyncObserver(app, holder), holder


def call(app, method, path, body=b"", headers=None, **kw):
    req = Request.blank(path, method=method, headers=dict(IDENTITY, **(headers or {})), **kw)
    if body:
        req.body = body
    resp = req.get_response(app)
    resp.body  # noqa: B018 - a server iterates and closes the response; webob does it here
    return resp


def test_create_response_is_identical_and_makes_event():
    glance = FakeGlance(chunks=3)
    bare = call(glance, "POST", "/v2/images", b"{}")
    app, holder = observed(FakeGlance(chunks=3))
    resp = call(app, "POST", "/v2/images", b"{}")
    assert (resp.status, resp.headerlist, resp.body) == (bare.status, bare.headerlist, bare.body)
    (event,) = holder.get().events
    assert event["kind"] == "created" and event["image"] == IMAGE
    assert event["context"]["user_id"] == "u1" and event["context"]["owner"] == "p1"


def test_patch_body_is_read_for_changes_and_still_reaches_glance():
    patch = json.dumps([{"op": "replace", "path": "/name", "value": "x"}]).encode()
    glance = FakeGlance(status="200 OK")
    app, holder = observed(glance)
    call(app, "PATCH", f"/v2/images/{IMG}", patch, content_type="application/openstack-images-v2.1-json-patch")
    assert glance.read == patch
    (event,) = holder.get().events
    assert (event["kind"], event["changes"]) == ("updated", ["name"])


def test_upload_is_streamed_not_buffered():
    produced = []

    def body():
        for _ in range(64):
            produced.append(1)
            yield b"x" * 65536

    class Upload:
        def __init__(self):
            self.max_ahead = 0

        def __call__(self, environ, start_response):
            total = 0
            while chunk := environ["wsgi.input"].read(65536):
                total += len(chunk)
                # The filter never read ahead of glance: at most one chunk produced beyond what glance took.
                self.max_ahead = max(self.max_ahead, len(produced) * 65536 - total)
            start_response("204 No Content", [])
            return []

    glance = Upload()
    app, holder = observed(glance)
    environ = {
        "REQUEST_METHOD": "PUT",
        "PATH_INFO": f"/v2/images/{IMG}/file",
        "wsgi.input": _GenReader(body()),
        "HTTP_TRANSFER_ENCODING": "chunked",
        "CONTENT_TYPE": "application/octet-stream",
    }
    statuses = []
    result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    list(result)
    result.close()
    assert statuses == ["204 No Content"]
    assert glance.max_ahead <= 65536
    assert holder.get().events[0]["kind"] == "uploaded"


class _GenReader(io.RawIOBase):
    def __init__(self, gen):
        self.gen = gen
        self.buf = b""

    def read(self, size=-1):
        while len(self.buf) < size:
            try:
                self.buf += next(self.gen)
            except StopIteration:
                break
        out, self.buf = self.buf[:size], self.buf[size:]
        return out


def test_response_body_of_a_file_route_is_a_generator_not_materialised():
    pulled = []

    def app(environ, start_response):
        start_response("204 No Content", [])

        def gen():
            for i in range(3):
                pulled.append(i)
                yield b"x"

        return gen()

    wrapped, holder = observed(app)
    result = wrapped({"REQUEST_METHOD": "PUT", "PATH_INFO": f"/v2/images/{IMG}/file", "wsgi.input": io.BytesIO()},
                     lambda *a: None)  # fmt: skip
    assert pulled == []  # nothing consumed before the server iterates
    it = iter(result)
    next(it)
    assert pulled == [0]
    list(it)
    result.close()
    assert len(holder.get().events) == 1


def test_sender_exception_never_reaches_the_caller():
    glance = FakeGlance(status="204 No Content", body=b"")
    app, _ = observed(glance, sender=FakeSender(fail=True))
    resp = call(app, "DELETE", f"/v2/images/{IMG}")
    assert resp.status_int == 204
    assert glance.closed


def test_sender_start_failure_never_reaches_the_caller():
    def broken(conf):
        raise OSError("spool dir not writable")

    app = SyncObserver(FakeGlance(status="204 No Content", body=b""), SenderHolder(None, factory=broken))
    assert call(app, "DELETE", f"/v2/images/{IMG}").status_int == 204


@pytest.mark.parametrize("status", ["400 Bad Request", "404 Not Found", "409 Conflict", "500 Internal Server Error"])
def test_failed_requests_make_no_event(status):
    app, holder = observed(FakeGlance(status=status, body=b'{"error": 1}'))
    resp = call(app, "POST", "/v2/images", b"{}")
    assert resp.status == status
    assert holder.get().events == []


def test_get_and_internal_requests_pass_untouched():
    calls = []

    def app(environ, start_response):
        calls.append(environ)
        start_response("200 OK", [])
        return marker

    marker = [b"data"]
    wrapped, holder = observed(app)
    assert wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": f"/v2/images/{IMG}/file"}, lambda *a: None) is marker
    internal = {"REQUEST_METHOD": "DELETE", "PATH_INFO": f"/v2/images/{IMG}", "HTTP_X_GLANCE_SYNC_INTERNAL": "1"}
    assert wrapped(internal, lambda *a: None) is marker
    assert holder.get().events == []


def test_filter_factory_disabled_returns_app_untouched(monkeypatch):
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    monkeypatch.setattr(middleware.cfg, "CONF", conf)
    app = object()
    assert middleware.filter_factory({})(app) is app
    # Registering twice (two pipelines, a reload) is tolerated.
    assert middleware.filter_factory({})(app) is app


def test_filter_factory_enabled_wraps(monkeypatch, tmp_path):
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    monkeypatch.setattr(middleware.cfg, "CONF", conf)
    middleware.opts.register_filter_opts(conf)
    conf.set_override("sync_enabled", True)
    conf.set_override("spool_dir", str(tmp_path), group="proxy")
    wrapped = middleware.filter_factory({})(FakeGlance())
    assert isinstance(wrapped, SyncObserver)
