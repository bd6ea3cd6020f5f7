"""The paste filter for glance-api's pipeline, and the WSGI observer it shares with the proxy.

Placed right after ``context`` (``... authtoken context glancesync rootapp``), the
filter sees the identity headers on the way in and glance's final status and JSON
on the way out (doc/glance-behaviour.md).  For each request it:

- takes ``X-Glance-Sync-Internal`` out of the request, so glance (or the proxy's
  upstream) never sees it, and passes the request on without an event when the
  header holds a valid loop-guard marker of our coordinator (glancesync.marker);
  a bare, forged or stale header is ignored and the request makes its event;
- asks ``events.match`` about method + path; anything else (GET, HEAD, downloads,
  non-image routes) goes straight to glance, untouched;
- keeps the PATCH request body (small JSON, re-wrapped for glance) and, for create
  and PATCH only, the JSON response while passing every chunk on unchanged; image
  data (``/file``) is never buffered;
- when the response is finished (``close()``), maps it to an event and submits it
  to the process's ``EventSender``, which never blocks.

Any error of ours is logged and swallowed: the user's request never waits on, or
fails because of, the sync manager.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from oslo_config import cfg

from glance_proxy import events
from glance_proxy.sender import EventSender
from glancesync import marker, opts
from glancesync.exceptions import KeyLoadError
from glancesync.protocol import INTERNAL_REQUEST_HEADER

LOG = logging.getLogger(__name__)

# Image records and JSON patches are a few KiB; anything bigger is not what we
# expect and is passed on without being kept.
MAX_JSON_BYTES = 1024 * 1024

_INTERNAL_ENVIRON = "HTTP_" + INTERNAL_REQUEST_HEADER.upper().replace("-", "_")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# A sender that cannot be built (spool_dir missing or unwritable, bad CURVE key) is
# tried again this often, not on every request; the ERROR naming the cause is
# repeated at most every REMINDER_INTERVAL seconds, with the count of lost events.
SENDER_RETRY_INTERVAL = 30.0
REMINDER_INTERVAL = 300.0


class SenderUnavailable(Exception):
    """No EventSender in this process right now; the failure is already logged."""


class SenderHolder:
    """One EventSender per process, started on first use (after gunicorn forks)."""

    def __init__(
        self,
        conf: Any,
        factory: Callable[[Any], EventSender] = EventSender,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conf = conf
        self.factory = factory
        self.clock = clock
        self._lock = threading.Lock()
        self._sender: EventSender | None = None
        self._pid = 0
        self._retry_at = 0.0
        self._reminded_at: float | None = None
        self._lost = 0

    def get(self) -> EventSender:
        """This process's sender; SenderUnavailable (already logged) while it cannot be built."""
        pid = os.getpid()
        if self._sender is None or self._pid != pid:
            with self._lock:
                if self._sender is None or self._pid != pid:
                    self._build(pid)
        return self._sender  # type: ignore[return-value]

    def _build(self, pid: int) -> None:
        now = self.clock()
        if self._pid == pid and now < self._retry_at:
            self._lost += 1
            raise SenderUnavailable()
        try:
            # A sender inherited across fork has no thread: start our own.
            sender = self.factory(self.conf).start()
        except Exception as exc:
            self._pid, self._sender = pid, None
            self._retry_at = now + SENDER_RETRY_INTERVAL
            self._lost += 1
            if self._reminded_at is None or now - self._reminded_at >= REMINDER_INTERVAL:
                first = self._reminded_at is None
                self._reminded_at = now
                LOG.error(
                    "glance-sync: %scannot start the event sender (outbox %s): %s; image events are "
                    "not recorded (%d lost so far, the coordinator's reconciler repairs them); "
                    "requests are served as usual, retrying every %g s",
                    "" if first else "still ", self._spool_dir(), exc, self._lost,
                    SENDER_RETRY_INTERVAL,
                )  # fmt: skip
            raise SenderUnavailable() from None
        if self._reminded_at is not None:
            LOG.warning("glance-sync: event sender started; %d image event(s) were lost before", self._lost)
        self._sender, self._pid = sender, pid
        self._reminded_at, self._lost = None, 0

    def _spool_dir(self) -> str:
        try:
            return str(self.conf.proxy.spool_dir)
        except Exception:  # no conf (tests) or no [proxy] group
            return "[proxy] spool_dir"

    def close(self) -> None:
        if self._sender is not None and self._pid == os.getpid():
            self._sender.close()


def _request_headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    return headers


class _Prefixed:
    """``wsgi.input`` for the app after we read ``head`` from ``stream``: head first, then the rest."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self._head = io.BytesIO(head)
        self._stream = stream

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._head.read() + self._stream.read()
        data = self._head.read(size)
        if not data and size:
            return self._stream.read(size)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line = self._head.readline(-1 if size is None else size)
        if line.endswith(b"\n") or (size is not None and 0 <= size <= len(line)):
            return line
        return line + self._stream.readline(-1 if size is None or size < 0 else size - len(line))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def _read_chunked_body(environ: dict[str, Any]) -> bytes | None:
    """A chunked body of at most MAX_JSON_BYTES; a longer one is passed on whole, unkept.

    Only when the server marks the input as terminated (``wsgi.input_terminated``,
    as gunicorn does and as webob requires before glance itself reads a body
    without Content-Length): elsewhere a read to the end could block.
    """
    if not environ.get("wsgi.input_terminated"):
        return None
    stream = environ["wsgi.input"]
    parts, kept = [], 0
    while kept <= MAX_JSON_BYTES:
        chunk = stream.read(min(65536, MAX_JSON_BYTES + 1 - kept))
        if not chunk:
            break
        parts.append(chunk)
        kept += len(chunk)
    body = b"".join(parts)
    if kept > MAX_JSON_BYTES:
        environ["wsgi.input"] = _Prefixed(body, stream)
        return None
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _read_small_body(environ: dict[str, Any]) -> bytes | None:
    """The request body when it is small; wsgi.input is re-wrapped for glance."""
    if not environ.get("CONTENT_LENGTH") and environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return _read_chunked_body(environ)
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        return None
    if length < 0 or length > MAX_JSON_BYTES:
        return None  # large or of unknown length: leave the stream alone, the event just lists no changes
    stream = environ["wsgi.input"]
    parts, left = [], length
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    body = b"".join(parts)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


class _Observed:
    """The app's response iterable, passed on chunk by chunk; reports when closed."""

    def __init__(self, inner: Iterable[bytes], keep_body: bool, on_close: Callable[[bytes | None], None]) -> None:
        self._inner = inner
        self._keep = keep_body
        self._parts: list[bytes] = []
        self._kept = 0
        self._on_close = on_close
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if self._keep:
                self._kept += len(chunk)
                if self._kept <= MAX_JSON_BYTES:
                    self._parts.append(chunk)
                else:
                    self._keep, self._parts = False, []
            yield chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close(b"".join(self._parts) if self._keep else None)


def load_internal_secret(conf: Any, strict: bool) -> bytes | None:
    """The loop-guard secret of ``[DEFAULT] sync_internal_secret_file``, None when unset.

    A file that does not load raises KeyLoadError when ``strict`` (glance-sync-proxy
    refuses to start); inside glance-api it is logged and no marker is trusted, so
    every change still makes its event.
    """
    path = conf.sync_internal_secret_file
    if not path:
        LOG.warning("glance-sync: [DEFAULT] sync_internal_secret_file is not set: no %s header is "
                    "trusted, the coordinator's own changes make (harmless) events too", INTERNAL_REQUEST_HEADER)
        return None
    try:
        return marker.load_secret(path)
    except KeyLoadError as exc:
        if strict:
            raise
        LOG.error("glance-sync: %s; no %s header is trusted, every change makes its event", exc,
                  INTERNAL_REQUEST_HEADER)
        return None


class SyncObserver:
    """WSGI middleware that turns successful image changes into events."""

    def __init__(self, app: WSGIApp, senders: SenderHolder, secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.senders = senders
        self.secret = secret
        self.clock = clock

    def _is_internal(self, environ: dict[str, Any]) -> bool:
        """Whether the request is our coordinator's; the header leaves ``environ`` either way."""
        value = environ.pop(_INTERNAL_ENVIRON, None)
        if value is None:
            return False
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        try:
            target = marker.request_target(path.encode("latin-1"), environ.get("QUERY_STRING", ""))
            trusted, reason = marker.check(self.secret, value, method, target, self.clock())
        except (UnicodeError, ValueError) as exc:
            trusted, reason = False, f"unreadable request target ({type(exc).__name__})"
        if not trusted and self.secret:
            LOG.warning("glance-sync: %s on %s %s not trusted (%s); the request makes its event as usual",
                        INTERNAL_REQUEST_HEADER, method, path[:200], reason)
        return trusted

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            route = None
            if not self._is_internal(environ):
                route = events.match(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
        except Exception:
            LOG.exception("glance-sync: cannot classify request; passed through")
            route = None
        if route is None:
            return self.app(environ, start_response)
        return self._observe(route, environ, start_response)

    def _observe(self, route: events.Route, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        seen: dict[str, Any] = {}
        patch = None
        try:
            if route.wants_request_body:
                patch = _read_small_body(environ)
            request_headers = _request_headers(environ)
        except Exception:
            LOG.exception("glance-sync: cannot read request; no event")
            return self.app(environ, start_response)

        def watching_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"], seen["headers"] = status, headers
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        def finished(body: bytes | None) -> None:
            self._emit(route, seen, request_headers, body, patch)

        inner = self.app(environ, watching_start_response)
        return _Observed(inner, route.wants_response_body, finished)

    def _emit(
        self,
        route: events.Route,
        seen: dict[str, Any],
        request_headers: dict[str, str],
        body: bytes | None,
        patch: bytes | None,
    ) -> None:
        try:
            status = int(str(seen.get("status", "0")).split(" ", 1)[0])
            if not 200 <= status < 300:
                return
            event = events.build_event(
                route,
                status,
                request_headers,
                dict(seen.get("headers") or ()),
                events.parse_json(body),
                events.parse_json(patch),
            )
            if event is not None:
                self.senders.get().submit(event)
        except SenderUnavailable:
            pass  # logged by the holder, at a bounded rate
        except Exception:
            LOG.exception("glance-sync: cannot emit %s event for image %s", route.kind, route.image_id)


def filter_factory(global_conf: dict[str, Any], **local_conf: Any) -> Callable[[WSGIApp], WSGIApp]:
    """paste.filter_factory: reads sync_enabled etc. from glance's own loaded CONF."""
    conf = cfg.CONF
    try:
        opts.register_filter_opts(conf)
        enabled = bool(conf.sync_enabled)
    except Exception:
        LOG.exception("glance-sync: cannot read the sync options; filter disabled")
        enabled = False
    if not enabled:
        return lambda app: app
    LOG.info("glance-sync: image events go to %s",
             ", ".join(conf.sync_servers) or f"{conf.sync_server_host}:{conf.sync_server_port}")
    senders = SenderHolder(conf)
    secret = load_internal_secret(conf, strict=False)

    def _filter(app: WSGIApp) -> WSGIApp:
        return SyncObserver(app, senders, secret)

    return _filter
