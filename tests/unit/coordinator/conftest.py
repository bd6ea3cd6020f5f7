"""Fixtures for the coordinator's unit tests: a migrated SQLite journal, a config, a fake glance,
and the service loop over real zmq sockets (``service``) with its fake cascading and regional glances."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq

from coordinator import manage
from coordinator.journal import Journal
from coordinator.registrar import Registrar
from coordinator.service import Service
from glancesync import config, storemap

REGIONS = ("RegionOne", "RegionTwo")
IMAGE_ID = "11111111-2222-3333-4444-555555555555"
# The loop's clock in the service tests.
NOW = 2_000_000.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image_record(image_id: str = IMAGE_ID, store_dir: str = "/srv/store", **extra: Any) -> dict[str, Any]:
    record = {
        "id": image_id, "name": "cirros", "status": "active", "size": 1024, "checksum": "c" * 32,
        "os_hash_algo": "sha512", "os_hash_value": "h" * 128, "disk_format": "raw",
        "container_format": "bare", "visibility": "public",
        "locations": [{"url": f"file://{store_dir}/{image_id}", "metadata": {}}],
    }
    record.update(extra)
    return record


class FakeImages:
    """The part of glanceclient's images API the registrar uses, with calls recorded."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.added: list[tuple[str, str, dict[str, Any]]] = []
        self.removed: list[tuple[str, set[str]]] = []
        self.gets: list[str] = []
        self.listed: list[dict[str, Any]] = []  # the filters of each listing
        self.write_delay = 0.0

    def get(self, image_id: str) -> dict[str, Any]:
        from glanceclient import exc

        self.gets.append(image_id)
        if image_id not in self.records:
            raise exc.HTTPNotFound("no such image")
        return dict(self.records[image_id])

    def add_location(self, image_id: str, url: str, metadata: dict[str, Any],
                     validation_data: dict[str, Any] | None = None) -> dict[str, Any]:
        self.added.append((image_id, url, metadata))
        if self.records[image_id].get("status") == "queued":  # like glance: a location activates it
            self.records[image_id].update(status="active", **(validation_data or {}))
        # Like glance: read the location set, write back the whole set with ours added,
        # with time in between for a concurrent writer to be lost.
        locations = list(self.records[image_id]["locations"])
        time.sleep(self.write_delay)
        self.records[image_id]["locations"] = [*locations, {"url": url, "metadata": metadata}]
        return dict(self.records[image_id])

    def delete_locations(self, image_id: str, urls: set[str]) -> None:
        self.removed.append((image_id, urls))
        locs = self.records[image_id]["locations"]
        self.records[image_id]["locations"] = [loc for loc in locs if loc["url"] not in urls]


class ListedImages(FakeImages):
    """A fake glance that also lists its images (the cascading one: events are fetched by listing)."""

    def list(self, filters: dict[str, Any], page_size: int = 20) -> Any:
        """glance's listing as ``glance.paged_images`` asks for it: ``id=in:`` and ``os_hidden`` filters
        (a hidden image is listed only when asked for), in id order, each record as its GET shows it."""
        self.listed.append(dict(filters))
        wanted = filters.get("id", "")
        ids = set(wanted[3:].split(",")) if wanted.startswith("in:") else None
        hidden = bool(filters.get("os_hidden"))
        return iter([dict(self.records[i]) for i in sorted(self.records) if (ids is None or i in ids)
                     and bool(self.records[i].get("os_hidden", False)) == hidden])


class ListingHttp:
    """glance's paged listing as glance.paged_images asks for it (``GET /v2/images?limit=&marker=``),
    served from the fake's ``images.list(filters, page_size)``: what the fake glance holds."""

    def __init__(self, images: Any) -> None:
        self.images = images
        self.listings: list[str] = []

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[None, dict[str, Any]]:
        from urllib.parse import parse_qsl, urlencode, urlsplit

        split = urlsplit(url)
        if split.path.startswith("/v2/images/"):  # one image's GET (glancejobs.image_json), as images.get
            return None, dict(self.images.get(split.path.rsplit("/", 1)[-1]), self=split.path)
        assert split.path == "/v2/images", url
        self.listings.append(url)
        query = dict(parse_qsl(split.query))
        limit, marker = int(query.pop("limit")), query.pop("marker", None)
        filters: dict[str, Any] = {k: (v == "true") if k == "os_hidden" else v for k, v in query.items()}
        listed = list(self.images.list(filters=filters, page_size=limit))
        start = 0
        if marker is not None:
            start = 1 + next(n for n, r in enumerate(listed) if isinstance(r, dict) and r.get("id") == marker)
        body: dict[str, Any] = {"images": listed[start:start + limit]}
        if start + limit < len(listed):
            body["next"] = "/v2/images?" + urlencode({**query, "limit": limit, "marker": "ignored"})
        return None, body


class FakeHttp(ListingHttp):
    """The raw calls: the listing, and the JSON-patch the registrar makes to add several locations at once."""

    def __init__(self, images: FakeImages) -> None:
        super().__init__(images)
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []

    def patch(self, url: str, headers: dict[str, str] | None = None, data: str = "[]") -> tuple[None, dict]:
        import json

        image_id = url.rsplit("/", 1)[-1]
        ops = json.loads(data)
        self.patches.append((image_id, ops))
        record = self.images.records[image_id]
        urls = [op["value"]["url"] for op in ops]
        if any(loc["url"] in urls for loc in record["locations"]):
            from glanceclient import exc

            raise exc.HTTPBadRequest("Location already exists")
        record["locations"] = [*record["locations"], *(op["value"] for op in ops)]
        return None, dict(record)


class FakeClient:
    def __init__(self, listing: bool = False) -> None:
        self.images = ListedImages() if listing else FakeImages()
        self.http_client = FakeHttp(self.images)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'journal.sqlite'}"
    manage.db_sync(url)
    return url


@pytest.fixture
def journal(db_url: str):
    j = Journal(db_url)
    yield j
    j.close()


@pytest.fixture
def store_yaml(tmp_path: Path) -> Path:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    data = {
        "cascading": {"store": {"host": "127.0.0.1", "user": "glance", "private_key_file": "/k",
                                "known_hosts_file": "/kh", "store_dir": str(store_dir)}},
        "regions": {name: {"glance": {"url": "http://127.0.0.1:1"}, "work_dir": str(tmp_path)}
                    for name in REGIONS},
    }
    path = tmp_path / "glance_store.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def stores(store_yaml: Path) -> storemap.StoreMap:
    return storemap.load(str(store_yaml))


def make_conf(tmp_path: Path, db_url: str, store_yaml: Path, **sections: dict[str, Any]):
    values: dict[str, dict[str, Any]] = {
        "DEFAULT": {"sync_server_port": free_port(), "glance_store_config": store_yaml,
                    "cascading_endpoint_url": "http://127.0.0.1:1", "task_retry_times": 2},
        "coordinator": {"agent_port": free_port(), "heartbeat_interval": 1.0, "lease_timeout": 10.0,
                        "retry_backoff": 5.0, "max_retry_backoff": 60.0, "glance_workers": 2},
        "database": {"connection": db_url},
    }
    for name, extra in sections.items():
        values.setdefault(name, {}).update(extra)
    lines = []
    for name, opts in values.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {v}" for k, v in opts.items()]
    path = tmp_path / "coordinator.conf"
    path.write_text("\n".join(lines) + "\n")
    return config.load(["--config-file", str(path)], "test-coordinator", setup_logging=False)


@pytest.fixture
def conf(tmp_path: Path, db_url: str, store_yaml: Path):
    return make_conf(tmp_path, db_url, store_yaml)


def add_listing(images: FakeImages) -> None:
    """Give the fake glance the listing call the reconciler makes."""

    def listing(filters: dict[str, Any], page_size: int = 20):
        hidden = bool(filters.get("os_hidden"))
        return iter([dict(r) for r in images.records.values() if bool(r.get("os_hidden", False)) == hidden])

    images.list = listing  # type: ignore[attr-defined]


@pytest.fixture
def client(stores):
    """The cascading glance, holding IMAGE_ID."""
    fake = FakeClient(listing=True)
    fake.images.records[IMAGE_ID] = image_record(store_dir=stores.store.store_dir)
    return fake


@pytest.fixture
def regional(client):
    """Every region's glance: here it holds the cascading record, i.e. the verified copy."""
    fake = FakeClient()
    fake.images.records[IMAGE_ID] = {k: v for k, v in client.images.records[IMAGE_ID].items() if k != "locations"}
    return fake


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture(autouse=True)
def services_shut_down(monkeypatch):
    """Every Service a test makes is shut down by its end (its doorbell's pipe, its sockets and
    the registrar's threads are not left to the rest of the run): the test fails otherwise."""
    made: list[Service] = []
    real_init = Service.__init__

    def init(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Service, "__init__", init)
    yield
    left = [svc for svc in made if not svc.doorbell.closed]
    for svc in left:
        svc.shutdown()
    assert not left, f"{len(left)} Service(s) left running by the test"


def start_service(conf, stores, journal, client, regional, ctx) -> Service:
    """A coordinator Service over real sockets, initialized at NOW; the caller shuts it down."""
    registrar = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=lambda _region: regional)
    svc = Service(conf, stores, journal, registrar, context=ctx)
    svc.initialize(NOW)
    return svc


@pytest.fixture
def service(conf, stores, journal, client, regional, ctx):
    svc = start_service(conf, stores, journal, client, regional, ctx)
    yield svc
    svc.shutdown()
