"""The paste filter for glance-api's pipeline, and the WSGI observer it shares with the proxy.

Placed right after ``context`` (``... authtoken context glancesync rootapp``), the
filter sees the identity headers on the way in and glance's final status and JSON
on the way out (GLANCE-NOTES.md).  For each request it:

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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from oslo_config import cfg

from glance_proxy import events
from glance_proxy.sender import EventSender
from glancesync import opts
from glancesync.protocol import INTERNAL_REQUEST_HEADER

LOG = logging.getLogger(__name__)

# Image records and JSON patches are a few KiB; anything bigger is not what we
# expect and is passed on without being kept.
MAX_JSON_BYTES = 1024 * 1024

_INTERNAL_ENVIRON = "HTTP_" + INTERNAL_REQUEST_HEADER.upper().replace("-", "_")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SenderHolder:
    """One EventSender per process, started on first use (after gunicorn forks)."""

    def __init__(self, conf: Any, factory: Callable[[Any], EventSender] = EventSender) -> None:
        self.conf = conf
        self.factory = factory
        self._lock = threading.Lock()
        self._sender: EventSender | None = None
        self._pid = 0

    def get(self) -> EventSender:
        pid = os.getpid()
        if self._sender is None or self._pid != pid:
            with self._lock:
                if self._sender is None or self._pid != pid:
                    # A sender inherited across fork has no thread: start our own.
                    self._sender = self.factory(self.conf).start()
                    self._pid = pid
        return self._sender

    def close(self) -> None:
        if self._sender is not None and self._pid == os.getpid():
            self._sender.close()


def _request_headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    return headers


def _read_small_body(environ: dict[str, Any]) -> bytes | None:
    """The request body when its Content-Length is small; wsgi.input is re-wrapped for glance."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        return None
    if length < 0 or length > MAX_JSON_BYTES:
        return None  # chunked or large: leave the stream alone, the event just lists no changes
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


class SyncObserver:
    """WSGI middleware that turns successful image changes into events."""

    def __init__(self, app: WSGIApp, senders: SenderHolder) -> None:
        self.app = app
        self.senders = senders

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            route = None
            if _INTERNAL_ENVIRON not in environ:
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
    LOG.info("glance-sync: image events go to %s:%s", conf.sync_server_host, conf.sync_server_port)
    senders = SenderHolder(conf)

    def _filter(app: WSGIApp) -> WSGIApp:
        return SyncObserver(app, senders)

    return _filter
