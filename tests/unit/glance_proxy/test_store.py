"""The cascaded:// store driver with a fake regional glance client."""

from __future__ import annotations

import hashlib
import logging

import glance_store.location
import pytest
import yaml
from glance.context import RequestContext
from glance_store import capabilities
from glance_store import exceptions as gs_exc
from glanceclient import exc as glance_exc
from oslo_config import cfg

from glance_proxy import store as store_mod
from glance_proxy.store import Store, StoreLocation

IMG = "1b2c3d4e-0000-4000-8000-000000000001"
DATA = bytes(range(256)) * 40  # 10240 bytes
OWNER = "aaaa0000aaaa0000aaaa0000aaaa0000"
OTHER = "bbbb0000bbbb0000bbbb0000bbbb0000"


class _Enforcer:
    """glance's policy enforcer, reduced to its default context_is_admin rule (role:admin)."""

    def check_is_admin(self, context):
        return "admin" in context.roles


def ctx(project: str | None, *roles: str) -> RequestContext:
    """The request context glance hands to a store driver."""
    return RequestContext(project_id=project, roles=list(roles or ("member", "reader")), policy_enforcer=_Enforcer())


ADMIN = ctx("cccc0000cccc0000cccc0000cccc0000", "admin", "member", "reader")


class FakeImages:
    def __init__(self, images: dict, chunk: int = 1000) -> None:
        self.images = images
        self.chunk = chunk
        self.data_calls: list[tuple] = []
        self.get_calls = 0

    def get(self, image_id):
        self.get_calls += 1
        if image_id not in self.images:
            raise glance_exc.HTTPNotFound("no image")
        if self.images[image_id] == "boom":
            raise glance_exc.HTTPServiceUnavailable("region down")
        return self.images[image_id]

    def data(self, image_id, do_checksum=True):
        self.data_calls.append((image_id, do_checksum))
        return (DATA[i : i + self.chunk] for i in range(0, len(DATA), self.chunk))


class FakeMembers:
    """``GET /v2/images/{id}/members/{project}``: 404 unless the project is a member."""

    def __init__(self, members: dict) -> None:
        self.members = members  # (image_id, project) -> status, or "boom"
        self.calls: list[tuple] = []

    def get(self, image_id, member_id):
        self.calls.append((image_id, member_id))
        status = self.members.get((image_id, member_id))
        if status is None:
            raise glance_exc.HTTPNotFound("not a member")
        if status == "boom":
            raise glance_exc.HTTPServiceUnavailable("region down")
        return {"image_id": image_id, "member_id": member_id, "status": status}


class FakeClient:
    def __init__(self, images: dict, members: dict | None = None) -> None:
        self.images = FakeImages(images)
        self.image_members = FakeMembers(members or {})


def record(image_id: str, visibility: str = "private", owner: str | None = OWNER, **extra) -> dict:
    return {"id": image_id, "size": len(DATA), "status": "active", "visibility": visibility, "owner": owner, **extra}


# Regional images of RegionA, by the rule that lets (or not) another project read them.
REGIONAL = {
    IMG: record(IMG),
    "public": record("public", "public"),
    "community": record("community", "community"),
    "shared": record("shared", "shared"),
    "ownerless": record("ownerless", owner=None),
    "deactivated": record("deactivated", "public", status="deactivated"),
    "empty": {"id": "empty", "size": None, "status": "queued", "visibility": "private", "owner": OWNER},
    "down": "boom",
}


@pytest.fixture
def store_yaml(tmp_path):
    data = {
        "cascading": {"store": {"host": "h", "user": "u", "private_key_file": "/k", "known_hosts_file": "/kh",
                                "store_dir": "/var/lib/glance/images"}},  # fmt: skip
        "regions": {
            "RegionA": {"glance": {"url": "http://127.0.0.1:1"}, "work_dir": "/tmp/a"},
            "RegionB": {"glance": {"url": "http://127.0.0.1:2"}, "work_dir": "/tmp/b"},
        },
    }
    path = tmp_path / "glance_store.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def made(monkeypatch):
    made: list[str] = []
    clients = {
        "http://127.0.0.1:1": FakeClient(dict(REGIONAL), {("shared", "accepted-project"): "accepted",
                                                          ("shared", "pending-project"): "pending",
                                                          ("shared", "rejected-project"): "rejected",
                                                          ("shared", "flaky-project"): "boom"}),  # fmt: skip
        "http://127.0.0.1:2": FakeClient({}),
    }

    def make_client(endpoint, sess=None):
        made.append(endpoint.url)
        return clients[endpoint.url]

    monkeypatch.setattr(store_mod.glance, "make_client", make_client)
    return made


@pytest.fixture
def store(store_yaml, made):
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    s = Store(conf)
    conf.set_override("cascaded_store_config", str(store_yaml), group="glance_store")
    s.configure()
    return s


def loc(store, uri):
    return glance_store.location.Location("cascaded", StoreLocation, store.conf, uri=uri)


def read(result):
    iterator, length = result
    return b"".join(iterator), length


def test_capabilities_and_scheme(store):
    assert store.get_schemes() == ("cascaded",)
    bits = capabilities.BitMasks
    for cap in (bits.READ_ACCESS, bits.READ_OFFSET, bits.READ_CHUNK, bits.WRITE_ACCESS, bits.DRIVER_REUSABLE):
        assert store.is_capable(cap)
    assert store.get_store_location_class() is StoreLocation


def test_uri_round_trip(store):
    location = loc(store, f"cascaded://RegionA/{IMG}")
    assert (location.store_location.region, location.store_location.image_id) == ("RegionA", IMG)
    assert location.get_store_uri() == f"cascaded://RegionA/{IMG}"


@pytest.mark.parametrize(
    "uri", ["cascaded://RegionA", "cascaded://RegionA/", "cascaded:///x", f"cascaded://RegionA/{IMG}/more",
            f"http://RegionA/{IMG}", f"cascaded://u:p@RegionA/{IMG}", f"cascaded://RegionA/{IMG}?x=1"],
)  # fmt: skip
def test_bad_uri_is_refused(store, uri):
    with pytest.raises(gs_exc.BadStoreUri):
        loc(store, uri)


def test_size_comes_from_the_regional_record(store):
    assert store.get_size(loc(store, f"cascaded://RegionA/{IMG}"), ADMIN) == len(DATA)


def test_size_zero_or_unknown_region_or_missing_image_is_refused(store):
    with pytest.raises(gs_exc.BadStoreUri):
        store.get_size(loc(store, "cascaded://RegionA/empty"), ADMIN)
    with pytest.raises(gs_exc.BadStoreUri):
        store.get_size(loc(store, f"cascaded://Nowhere/{IMG}"), ADMIN)
    with pytest.raises(gs_exc.NotFound):
        store.get_size(loc(store, f"cascaded://RegionB/{IMG}"), ADMIN)
    with pytest.raises(gs_exc.RemoteServiceUnavailable):
        store.get_size(loc(store, "cascaded://RegionA/down"), ADMIN)


def test_get_streams_whole_image_with_checksum(store):
    client = store.client("RegionA")
    body, length = read(store.get(loc(store, f"cascaded://RegionA/{IMG}"), context=ADMIN))
    assert hashlib.sha256(body).digest() == hashlib.sha256(DATA).digest()
    assert length == len(DATA)
    assert client.images.data_calls == [(IMG, True)]


def test_get_is_lazy(store):
    iterator, _ = store.get(loc(store, f"cascaded://RegionA/{IMG}"), context=ADMIN)
    first = next(iter(iterator))
    assert first == DATA[:1000]  # one regional chunk, not the whole image


@pytest.mark.parametrize(
    ("offset", "chunk_size"),
    [(0, 1), (1, None), (999, 2), (1000, 1000), (1500, 3000), (10000, None), (10239, 100), (0, 10240), (5, 10235)],
)
def test_get_with_offset_and_chunk_size(store, offset, chunk_size):
    body, length = read(store.get(loc(store, f"cascaded://RegionA/{IMG}"), offset=offset, chunk_size=chunk_size, context=ADMIN))
    end = len(DATA) if chunk_size is None else offset + chunk_size
    assert body == DATA[offset:end]
    assert length == len(body)


def test_get_of_missing_image_is_not_found(store):
    with pytest.raises(gs_exc.NotFound):
        store.get(loc(store, f"cascaded://RegionB/{IMG}"), context=ADMIN)


def test_clients_and_store_map_are_cached(store, made):
    for _ in range(3):
        store.get_size(loc(store, f"cascaded://RegionA/{IMG}"), ADMIN)
    assert made == ["http://127.0.0.1:1"]


def test_delete_is_an_immediate_no_op(store, made):
    assert store.delete(loc(store, f"cascaded://RegionA/{IMG}")) is None
    assert made == []  # not even a client was built


def test_add_is_refused(store):
    with pytest.raises(gs_exc.StoreAddDisabled):
        store.add(IMG, iter([b"x"]), 1, "sha512")


def test_broken_store_config_is_a_store_error(store, tmp_path):
    store.conf.set_override("cascaded_store_config", str(tmp_path / "missing.yaml"), group="glance_store")
    store._map = None
    with pytest.raises(gs_exc.BadStoreConfiguration):
        store.get_size(loc(store, f"cascaded://RegionA/{IMG}"), ADMIN)


def test_hung_region_fails_get_size_fast_instead_of_holding_the_request(tmp_path, monkeypatch):
    """A regional glance that accepts and never answers: get_size gives up within REGION_TIMEOUT."""
    import socket
    import threading
    import time

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    data = {"cascading": {"store": {"host": "h", "user": "u", "private_key_file": "/k", "known_hosts_file": "/kh",
                                    "store_dir": "/s"}},
            "regions": {"RegionH": {"glance": {"url": f"http://127.0.0.1:{hung.getsockname()[1]}"},
                                    "work_dir": "/tmp/h"}}}  # fmt: skip
    path = tmp_path / "hung.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(store_mod, "REGION_TIMEOUT", 1.0, raising=False)
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    s = Store(conf)
    conf.set_override("cascaded_store_config", str(path), group="glance_store")
    s.configure()
    outcome: list = []

    def call():
        started = time.monotonic()
        try:
            s.get_size(loc(s, f"cascaded://RegionH/{IMG}"), ADMIN)
        except gs_exc.GlanceStoreException as exc:
            outcome.append((type(exc), time.monotonic() - started))

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(15)
    hung.close()
    assert outcome, "get_size still waiting on a hung region after 15 s"
    kind, seconds = outcome[0]
    assert kind is gs_exc.RemoteServiceUnavailable and seconds < 10


# -- authorization: who may read a regional image through the driver ---------------


@pytest.mark.parametrize(
    ("image_id", "context"),
    [
        (IMG, ADMIN),  # admin reads anything
        (IMG, ctx(OWNER)),  # the owning project
        (IMG, ctx(OWNER, "reader")),  # glance's download policy checked the role already
        ("public", ctx(OTHER)),
        ("community", ctx(OTHER)),
        ("shared", ctx(OWNER)),
        ("shared", ctx("accepted-project")),  # an accepted member
        ("deactivated", ADMIN),
        ("ownerless", ADMIN),
    ],
    ids=["admin", "owner", "owner-reader", "public", "community", "shared-owner", "accepted-member",
         "deactivated-admin", "ownerless-admin"],
)
def test_allowed_callers_read_size_and_data(store, image_id, context):
    location = loc(store, f"cascaded://RegionA/{image_id}")
    assert store.get_size(location, context) == len(DATA)
    body, length = read(store.get(location, context=context))
    assert (body, length) == (DATA, len(DATA))


@pytest.mark.parametrize(
    ("image_id", "context"),
    [
        (IMG, ctx(OTHER)),  # another project's private image: the confused deputy
        (IMG, ctx(OTHER, "member", "reader", "service")),  # service is not admin
        ("shared", ctx(OTHER)),  # shared, but not with this project
        ("shared", ctx("pending-project")),
        ("shared", ctx("rejected-project")),
        ("shared", ctx("flaky-project")),  # membership unknown (region error): refused, same answer
        ("ownerless", ctx(None)),  # no project must not match no owner
        ("ownerless", ctx(OTHER)),
        ("deactivated", ctx(OWNER)),  # glance: deactivated data is for admins only
        (IMG, None),  # no caller at all
    ],
    ids=["other-private", "service-role", "shared-not-member", "pending-member", "rejected-member",
         "member-lookup-fails", "projectless", "ownerless", "deactivated-owner", "no-context"],
)
def test_refused_callers_get_not_found_from_get_size_and_get(store, image_id, context):
    location = loc(store, f"cascaded://RegionA/{image_id}")
    with pytest.raises(gs_exc.NotFound) as refused:
        store.get_size(location, context)
    with pytest.raises(gs_exc.NotFound):
        store.get(location, context=context)
    assert store.client("RegionA").images.data_calls == []  # not one byte was fetched
    # The very answer a missing image gets: a refusal does not reveal that the image exists.
    with pytest.raises(gs_exc.NotFound) as missing:
        store.get_size(loc(store, "cascaded://RegionA/no-such-image"), ADMIN)
    assert str(refused.value).replace(image_id, "X") == str(missing.value).replace("no-such-image", "X")


def test_membership_is_asked_only_for_shared_images_and_only_for_the_callers_project(store):
    members = store.client("RegionA").image_members
    store.get_size(loc(store, f"cascaded://RegionA/{IMG}"), ctx(OWNER))
    store.get_size(loc(store, "cascaded://RegionA/public"), ctx(OTHER))
    assert members.calls == []
    store.get_size(loc(store, "cascaded://RegionA/shared"), ctx("accepted-project"))
    assert members.calls == [("shared", "accepted-project")]


def test_no_decision_is_cached_between_callers(store):
    """The owner reads, then another project asks for the same location: refused, record fetched again."""
    images = store.client("RegionA").images
    location = loc(store, f"cascaded://RegionA/{IMG}")
    store.get_size(location, ctx(OWNER))
    with pytest.raises(gs_exc.NotFound):
        store.get_size(location, ctx(OTHER))
    assert images.get_calls == 2
    store.client("RegionA").image_members.members[("shared", "later")] = "pending"
    with pytest.raises(gs_exc.NotFound):
        store.get_size(loc(store, "cascaded://RegionA/shared"), ctx("later"))
    store.client("RegionA").image_members.members[("shared", "later")] = "accepted"
    assert store.get_size(loc(store, "cascaded://RegionA/shared"), ctx("later")) == len(DATA)


def test_a_read_without_context_is_refused_with_one_log_line_and_no_regional_call(store, caplog):
    images = store.client("RegionA").images
    with caplog.at_level(logging.WARNING, logger=store_mod.__name__):
        with pytest.raises(gs_exc.NotFound):
            store.get_size(loc(store, f"cascaded://RegionA/{IMG}"))
    assert images.get_calls == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"cascaded store: read of cascaded://RegionA/{IMG} without a request context refused"
    ]

