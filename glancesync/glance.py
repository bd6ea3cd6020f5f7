"""Clients for glance-api: a keystoneauth1 session and a python-glanceclient v2 client per endpoint.

The coordinator (cascading glance), the agents (their own region) and the
``cascaded://`` store driver (every region) all reach glance the same way, so the
session building lives here once.  ``auth_type: none`` serves glances without
keystone; ``headers`` are sent with every request (identity headers for a glance
that trusts them, as the test harness runs it).  An endpoint with an
``internal_secret`` (the coordinator's cascading glance) signs every request with
the loop-guard marker (glancesync.marker) just before it goes on the wire.  The
environment's proxy variables are read once per host, not on every request (httpenv.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import urlencode

from glanceclient import client as glance_client
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import noauth, session
from oslo_utils import strutils

from glancesync import httpenv, marker, untrusted
from glancesync.exceptions import ConfigError, GlanceError
from glancesync.protocol import INTERNAL_REQUEST_HEADER
from glancesync.storemap import GlanceEndpoint

T = TypeVar("T")

# Fields glance owns or computes: never copied from one glance to another.
GLANCE_OWNED_FIELDS = frozenset(
    {
        "id", "status", "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value",
        "created_at", "updated_at", "file", "schema", "self", "direct_url", "locations",
        "stores",
        # A protected regional copy could not be removed by a delete task; the
        # cascading image's protection already guards the user's intent.
        "protected",
    }
)


def make_session(endpoint: GlanceEndpoint) -> session.Session:
    """A keystoneauth1 session for ``endpoint``; raises ConfigError for unusable auth options."""
    options = dict(endpoint.auth)
    auth_type = options.pop("auth_type", "none")
    if auth_type in ("none", "noauth", None):
        auth = noauth.NoAuth(endpoint=endpoint.url)
    else:
        try:
            loader = ks_loading.get_plugin_loader(auth_type)
            auth = loader.load_from_options(**options)
        except (ks_exc.NoMatchingPlugin, ks_exc.MissingRequiredOptions, TypeError) as exc:
            raise ConfigError(source="glance auth", detail=f"auth_type {auth_type}: {exc}") from None
    sess = session.Session(
        auth=auth, verify=endpoint.verify, additional_headers=dict(endpoint.headers), timeout=endpoint.timeout,
        session=_requests_session(),
    )
    if endpoint.internal_secret:
        # Only requests to glance itself: a keystone token request on the same
        # session has no use for the marker, and keystone must never see it.
        if endpoint.url:
            sess.session.mount(endpoint.url.rstrip("/") + "/", SigningAdapter(endpoint.internal_secret))
        else:
            adapter = SigningAdapter(endpoint.internal_secret, unsigned=keystone_urls(options.get("auth_url")))
            for prefix in ("http://", "https://"):
                sess.session.mount(prefix, adapter)
    return sess


def _requests_session() -> httpenv.EnvironmentOnce:
    """What keystoneauth1 would make itself (keep-alive adapters), reading the environment once (httpenv)."""
    requests_session = httpenv.EnvironmentOnce()
    adapter = session.TCPKeepAliveAdapter()
    for prefix in list(requests_session.adapters):
        requests_session.mount(prefix, adapter)
    return requests_session


def keystone_urls(auth_url: str | None) -> tuple[str, str] | None:
    """What keystoneauth's identity plugins call for ``auth_url``: (prefix, unversioned root).

    Everything at or below ``auth_url`` is keystone's. Version discovery also
    fetches the unversioned root itself, but only that URL: glance may live
    below the same root (``http://host/v3`` beside ``http://host/image``).
    """
    if not auth_url:
        return None
    base = auth_url.rstrip("/")
    head, _, last = base.rpartition("/")
    root = head if last[:1].lower() == "v" and last[1:2].isdigit() else base
    return base, root


class SigningAdapter(session.TCPKeepAliveAdapter):
    """keystoneauth1's transport adapter, adding the loop-guard marker to each request it sends.

    Signing the prepared request here covers exactly the method, path and query
    that go on the wire, for every retry and redirect (each gets a fresh time).
    """

    def __init__(
        self, secret: bytes, clock: Callable[[], float] = time.time, unsigned: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._secret = secret
        self._clock = clock
        self._unsigned = unsigned

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._is_unsigned(request.url):
            request.headers[INTERNAL_REQUEST_HEADER] = marker.sign(
                self._secret, request.method, marker.url_target(request.url), self._clock()
            )
        return super().send(request, *args, **kwargs)

    def _is_unsigned(self, url: str) -> bool:
        if self._unsigned is None:
            return False
        prefix, root = self._unsigned
        bare = url.split("?", 1)[0].rstrip("/")
        return bare in (prefix, root) or bare.startswith(prefix + "/")


def make_client(endpoint: GlanceEndpoint, sess: session.Session | None = None) -> Any:
    """A glanceclient v2 client; ``endpoint.url`` overrides the keystone catalog when set."""
    kwargs: dict[str, Any] = {"session": sess or make_session(endpoint)}
    if endpoint.url:
        kwargs["endpoint_override"] = endpoint.url
    else:
        kwargs.update(interface=endpoint.interface, region_name=endpoint.region_name)
    return glance_client.Client("2", **kwargs)


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, (glance_exc.HTTPNotFound, glance_exc.NotFound, ks_exc.NotFound))


def call(fn: Callable[[], T], endpoint: str, missing: T) -> T:
    """``fn()``; ``missing`` when glance answers 404; any other error as a GlanceError."""
    try:
        return fn()
    except Exception as exc:
        if is_not_found(exc):
            return missing
        raise translate(exc, endpoint) from None


def get_image(client: Any, image_id: str, endpoint: str) -> dict[str, Any] | None:
    """An image as a plain dict, None when glance answers 404."""
    return call(lambda: image_to_dict(client.images.get(image_id)), endpoint, None)


# Ids asked for in one listing (``id=in:a,b,...``): 36 characters each, so the request
# line stays under about 3 KiB, well within what web servers and proxies take.
IDS_PER_LISTING = 80


def images_by_id(client: Any, image_ids: list[str], endpoint: str) -> dict[str, dict[str, Any]]:
    """Id -> record of those of ``image_ids`` that a listing filtered by id shows.

    One listing per ``IDS_PER_LISTING`` ids (glance v2's ``id=in:`` filter, paged by
    glanceclient) instead of one GET per image.  A listing leaves out images it is not
    asked about (``os_hidden`` ones, shared ones not accepted...), so an id missing here
    may still exist: read it on its own (``get_image``) before calling it missing.
    Raises GlanceError when glance does not answer.
    """
    wanted = sorted({i for i in image_ids if untrusted.is_image_id(i)})  # no comma can reach the filter
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), IDS_PER_LISTING):
        chunk = wanted[start:start + IDS_PER_LISTING]
        filters = {"id": "in:" + ",".join(chunk), "visibility": "all"}
        # One more than asked for: a full page would make glance add a ``next`` link, and
        # paged_images would follow it with one more (empty) request.
        listed = call(functools.partial(_listing, client, filters, len(chunk) + 1), endpoint, [])
        asked = set(chunk)
        found.update((image["id"], image) for image in listed if image.get("id") in asked)
    return found


def _listing(client: Any, filters: dict[str, str], page_size: int) -> list[dict[str, Any]]:
    return list(paged_images(client, filters, page_size))


def paged_images(client: Any, filters: Mapping[str, Any], page_size: int) -> Iterator[dict[str, Any]]:
    """Every image of a glance v2 listing, as glance's own JSON objects, a page of ``page_size`` at a time.

    Plain GETs (``limit``, then ``marker`` = the last id of the page while glance gives a
    ``next`` link) on the glanceclient's keystoneauth1 session adapter, so auth, TLS,
    headers, the loop-guard signature and the error translation stay those of every other
    call; glanceclient's own ``images.list`` builds a warlock model per image, about half
    of a reconciler pass's CPU at 100,000 images.  Entries that are not objects are left
    out; a page that is not a listing raises ValueError (``call``/``translate`` make it a
    GlanceError).
    """
    query = {key: str(value).lower() if isinstance(value, bool) else value for key, value in filters.items()}
    query["limit"] = page_size
    while True:
        _resp, body = client.http_client.get("/v2/images?" + urlencode(query))
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list):
            raise ValueError("the image listing is not a JSON object with an images list")
        for image in images:
            if isinstance(image, dict):
                image.pop("self", None)  # as glanceclient's listing: a link, not a property
                yield image
        if not body.get("next") or not images:
            return
        last = images[-1].get("id") if isinstance(images[-1], dict) else None
        if not isinstance(last, str) or last == query.get("marker"):
            raise ValueError("the image listing's next page has no usable marker")
        query["marker"] = last


def translate(exc: BaseException, endpoint: str) -> GlanceError:
    """Turn a glanceclient / keystoneauth error into GlanceError, retryable unless it is a client error."""
    status = getattr(exc, "code", None) or getattr(exc, "http_status", None)
    retryable = not (isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429))
    # Library messages can quote request headers or bodies: mask anything secret
    # before the text becomes a task's last_error or a log line.
    detail = f"{type(exc).__name__}: {strutils.mask_password(str(exc)[:500])}"
    return GlanceError(endpoint=endpoint, detail=detail, retryable=retryable)


def image_to_dict(image: Any) -> dict[str, Any]:
    """A plain dict of a glanceclient image (a warlock model), safe to msgpack."""
    return {str(k): v for k, v in dict(image).items() if _packable(v)}


def _packable(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_packable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _packable(v) for k, v in value.items())
    return False


def copied_properties(image: dict[str, Any]) -> dict[str, Any]:
    """What a regional copy takes from the cascading image: everything but glance-owned fields.

    ``os_glance_*`` properties are reserved to glance itself (import state, hashes)
    and refused on create, so they never cross.
    """
    return {
        key: value
        for key, value in image.items()
        if key not in GLANCE_OWNED_FIELDS and not key.startswith("os_glance") and value is not None
    }


def shared_members(client: Any, image: dict[str, Any] | None, endpoint: str) -> list[dict[str, str]] | None:
    """The members of a shared image as ``[{"member_id", "status"}]``, sorted; None for any other image.

    Glance keeps members only for ``shared`` images (it refuses the call for the others).
    """
    if not image or image.get("visibility") != "shared":
        return None
    listed = call(lambda: list(client.image_members.list(image["id"])), endpoint, missing=[])
    return sorted(({"member_id": str(m["member_id"]), "status": str(m["status"])} for m in listed),
                  key=lambda m: m["member_id"])
