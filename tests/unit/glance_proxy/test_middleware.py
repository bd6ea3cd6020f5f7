"""The paste filter with a fake glance app: identical responses, streaming, errors swallowed."""

from __future__ import annotations

import io
import json
import os

import pytest
from oslo_config import cfg
from webob import Request

from glance_proxy import middleware
from glance_proxy.middleware import SenderHolder, SyncObserver
from glancesync import marker

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


def test_get_requests_pass_untouched():
    def app(environ, start_response):
        start_response("200 OK", [])
        return data

    data = [b"data"]
    wrapped, holder = observed(app)
    assert wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": f"/v2/images/{IMG}/file"}, lambda *a: None) is data
    assert holder.get().events == []


# -- the loop-guard marker ---------------------------------------------------------

SECRET = b"k" * 64
NOW = 1_800_000_000.0


def guarded(secret=SECRET, now=NOW):
    glance = FakeGlance(status="204 No Content", body=b"")
    seen = []

    def app(environ, start_response):
        seen.append(dict(environ))
        return glance(environ, start_response)

    holder = SenderHolder(conf=None, factory=lambda conf: FakeSender())
    return SyncObserver(app, holder, secret, clock=lambda: now), holder, seen


def signed(method="DELETE", path=f"/v2/images/{IMG}", secret=SECRET, at=NOW, query=""):
    return marker.sign(secret, method, marker.request_target(path.encode(), query), at)


def test_a_valid_marker_makes_no_event_and_never_reaches_glance():
    app, holder, seen = guarded()
    resp = call(app, "DELETE", f"/v2/images/{IMG}", headers={"X-Glance-Sync-Internal": signed()})
    assert resp.status_int == 204
    assert holder.get().events == []
    assert "HTTP_X_GLANCE_SYNC_INTERNAL" not in seen[0]
    # Also behind a prefix (SCRIPT_NAME) and with a query string.
    value = signed("PATCH", f"/image/v2/images/{IMG}", query="a=1")
    environ = {"REQUEST_METHOD": "PATCH", "SCRIPT_NAME": "/image", "PATH_INFO": f"/v2/images/{IMG}",
               "QUERY_STRING": "a=1", "HTTP_X_GLANCE_SYNC_INTERNAL": value, "wsgi.input": io.BytesIO()}
    b"".join(app(environ, lambda *a: None))
    assert holder.get().events == [] and "HTTP_X_GLANCE_SYNC_INTERNAL" not in seen[1]


@pytest.mark.parametrize("value", [
    "1",
    "coordinator",
    signed(secret=b"x" * 64),  # forged with another secret
    signed(at=NOW - marker.MAX_SKEW - 1),  # stale
    signed(at=NOW + marker.MAX_SKEW + 1),  # from the future
    signed(method="PATCH"),  # made for another request
    signed(path="/v2/images/someone-else"),
    "v1:1800000000:" + "0" * 64,
])  # fmt: skip
def test_a_bare_forged_or_stale_marker_still_makes_the_event(value, caplog):
    app, holder, seen = guarded()
    with caplog.at_level("WARNING", logger="glance_proxy"):
        resp = call(app, "DELETE", f"/v2/images/{IMG}", headers={"X-Glance-Sync-Internal": value})
    assert resp.status_int == 204
    (event,) = holder.get().events
    assert (event["kind"], event["image_id"]) == ("deleted", IMG)
    assert "HTTP_X_GLANCE_SYNC_INTERNAL" not in seen[0]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "not trusted" in line and (len(value) < 20 or value not in line)


def test_without_a_secret_no_marker_is_trusted():
    app, holder, seen = guarded(secret=None)
    call(app, "DELETE", f"/v2/images/{IMG}", headers={"X-Glance-Sync-Internal": signed()})
    assert [e["kind"] for e in holder.get().events] == ["deleted"]
    assert "HTTP_X_GLANCE_SYNC_INTERNAL" not in seen[0]


def test_the_header_is_removed_from_reads_too():
    app, holder, seen = guarded()
    call(app, "GET", f"/v2/images/{IMG}", headers={"X-Glance-Sync-Internal": "1"})
    assert "HTTP_X_GLANCE_SYNC_INTERNAL" not in seen[0] and holder.get().events == []


def _filter_conf(monkeypatch, tmp_path, secret_file=None):
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    monkeypatch.setattr(middleware.cfg, "CONF", conf)
    middleware.opts.register_filter_opts(conf)
    conf.set_override("sync_enabled", True)
    conf.set_override("spool_dir", str(tmp_path), group="proxy")
    if secret_file:
        conf.set_override("sync_internal_secret_file", str(secret_file))
    return conf


def test_filter_factory_without_a_secret_warns_once_and_trusts_nothing(monkeypatch, tmp_path, caplog):
    _filter_conf(monkeypatch, tmp_path)
    with caplog.at_level("WARNING", logger="glance_proxy"):
        wrapped = middleware.filter_factory({})(FakeGlance())
    assert wrapped.secret is None
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "sync_internal_secret_file is not set" in line


def test_filter_factory_loads_the_secret(monkeypatch, tmp_path):
    secret_file = tmp_path / "internal.secret"
    marker.write_secret(str(secret_file))
    _filter_conf(monkeypatch, tmp_path, secret_file)
    assert middleware.filter_factory({})(FakeGlance()).secret == secret_file.read_bytes().strip()


def test_filter_factory_refuses_a_readable_secret_but_keeps_serving(monkeypatch, tmp_path, caplog):
    secret_file = tmp_path / "internal.secret"
    marker.write_secret(str(secret_file))
    os.chmod(secret_file, 0o644)
    _filter_conf(monkeypatch, tmp_path, secret_file)
    with caplog.at_level("WARNING", logger="glance_proxy"):
        wrapped = middleware.filter_factory({})(FakeGlance())
    assert isinstance(wrapped, SyncObserver) and wrapped.secret is None
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert str(secret_file) in line and "chmod 600" in line
    assert secret_file.read_text().strip() not in caplog.text


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


def test_unwritable_spool_dir_logs_one_error_then_reminders_and_never_fails_requests(conf, tmp_path, caplog):
    """A real EventSender on a spool_dir that cannot be created: one ERROR naming it, not one per request."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    conf.set_override("spool_dir", str(blocker / "spool"), group="proxy")
    clock = [0.0]
    holder = SenderHolder(conf, clock=lambda: clock[0])
    app = SyncObserver(FakeGlance(status="204 No Content", body=b""), holder)
    with caplog.at_level("WARNING", logger="glance_proxy"):
        for second in range(0, 600, 5):  # ten minutes of deletes, one every 5 s
            clock[0] = float(second)
            assert call(app, "DELETE", f"/v2/images/{IMG}").status_int == 204
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors and str(blocker / "spool") in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)  # one clear line, no traceback per request
    assert 2 <= len(errors) <= 3, [r.getMessage() for r in errors]  # first + reminders every 300 s
    assert "still" in errors[-1].getMessage()
    # Once the directory can be made, the next retry starts the sender and events flow again.
    blocker.unlink()
    clock[0] = 1000.0
    assert call(app, "DELETE", f"/v2/images/{IMG}").status_int == 204
    sender = holder.get()
    try:
        assert sender.spool.dir.is_dir()
    finally:
        holder.close()


class _ChunkedInput:
    """A server's decoded chunked input: short reads, b"" at the end."""

    def __init__(self, data: bytes, piece: int = 7) -> None:
        self.data, self.piece, self.pos, self.largest_read = data, piece, 0, 0

    def read(self, size: int = -1) -> bytes:
        size = self.piece if size is None or size < 0 else min(size, self.piece)
        chunk = self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk


def _chunked_patch(app, body: bytes, terminated: bool = True) -> _ChunkedInput:
    stream = _ChunkedInput(body, piece=4096 if len(body) > 100_000 else 7)
    environ = {"REQUEST_METHOD": "PATCH", "PATH_INFO": f"/v2/images/{IMG}", "HTTP_TRANSFER_ENCODING": "chunked",
               "CONTENT_TYPE": "application/openstack-images-v2.1-json-patch", "wsgi.input": stream,
               "HTTP_X_USER_ID": "u1"}  # fmt: skip
    if terminated:
        environ["wsgi.input_terminated"] = True
    result = app(environ, lambda status, headers, exc_info=None: None)
    b"".join(result)
    result.close()
    return stream


def test_chunked_patch_body_is_read_for_changes_and_still_reaches_glance():
    patch = json.dumps([{"op": "replace", "path": "/name", "value": "x"},
                        {"op": "add", "path": "/hw_disk_bus", "value": "scsi"}]).encode()
    glance = FakeGlance(status="200 OK")
    app, holder = observed(glance)
    _chunked_patch(app, patch)
    assert glance.read == patch
    (event,) = holder.get().events
    assert (event["kind"], event["changes"]) == ("updated", ["name", "hw_disk_bus"])


def test_large_chunked_patch_reaches_glance_whole_and_is_not_kept():
    big = b"[" + b" " * (3 * middleware.MAX_JSON_BYTES) + b"]"
    seen = []

    def glance(environ, start_response):
        while chunk := environ["wsgi.input"].read(65536):
            seen.append(chunk)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(IMAGE).encode()]

    app, holder = observed(glance)
    _chunked_patch(app, big)
    assert b"".join(seen) == big
    (event,) = holder.get().events
    assert event["changes"] == []


def test_chunked_patch_without_terminated_input_is_left_alone():
    """A server that does not mark its input terminated: reading to the end could block, so we never do."""
    glance = FakeGlance(status="200 OK")
    app, holder = observed(glance)
    stream = _chunked_patch(app, b'[{"op": "replace", "path": "/name", "value": "x"}]', terminated=False)
    assert stream.pos == len(glance.read)  # only glance read it
    assert holder.get().events[0]["changes"] == []
