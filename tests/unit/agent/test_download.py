"""Sources in a region (agent/download.py): which account reads a snapshot, and the verified download."""

from __future__ import annotations

import copy
import hashlib
import http.server
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import budget, download, transfer
from glancesync import storemap
from glancesync.exceptions import SourceRefused, TransferError, VerificationError

IMAGE_ID = "11111111-2222-3333-4444-555555555555"
DATA = b"snapshot bytes " * 5000
STORE = {"host": "h", "user": "u", "private_key_file": "/k", "known_hosts_file": "/kh"}
FILE: dict[str, Any] = {
    "cascading": {"store": {**STORE, "store_dir": "/srv/cascading"}},
    "regions": {
        "RegionOne": {"glance": {"url": "http://one:9292"}, "work_dir": "/w",
                      "source": {"glance": {"url": "http://one:9292", "headers": {"X-Roles": "reader"}},
                                 "store": {**STORE, "host": "one-store", "store_dir": "/srv/one"}}},
        "RegionTwo": {"glance": {"url": "http://two:9292"}, "work_dir": "/w"},
    },
}


def agent_map(tmp_path: Path, data: dict[str, Any] = FILE, region: str = "RegionTwo") -> storemap.StoreMap:
    path = tmp_path / "glance_store.yaml"
    path.write_text(yaml.safe_dump(data))
    return storemap.load(str(path), storemap.Role.AGENT, region)


def image() -> dict[str, Any]:
    return {"id": IMAGE_ID, "status": "active", "size": len(DATA), "checksum": hashlib.md5(DATA).hexdigest(),
            "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(DATA).hexdigest()}


def test_the_agent_loads_other_regions_sources_and_nothing_else_of_them(tmp_path: Path) -> None:
    smap = agent_map(tmp_path)
    assert list(smap.regions) == ["RegionTwo"]
    one = smap.sources["RegionOne"]
    assert one.glance is not None and one.glance.headers == {"X-Roles": "reader"}
    assert one.store is not None and one.store.host == "one-store"
    coordinator = storemap.load(str(tmp_path / "glance_store.yaml"))
    assert coordinator.sources["RegionOne"].glance is None
    assert coordinator.sources["RegionOne"].store.store_dir == "/srv/one"
    assert coordinator.sources["RegionOne"].store.private_key_file is None


def test_sources_are_checked_against_the_regions_own_account(tmp_path: Path) -> None:
    smap = agent_map(tmp_path)
    cascading = download.where_from(IMAGE_ID, {"type": "sftp", "path": f"/srv/cascading/{IMAGE_ID}"}, smap)
    assert cascading.store is smap.store and cascading.region is None
    regional = download.where_from(IMAGE_ID, {"type": "sftp", "region": "RegionOne",
                                              "path": f"/srv/one/{IMAGE_ID}"}, smap)
    assert regional.store is smap.sources["RegionOne"].store and regional.path == f"/srv/one/{IMAGE_ID}"
    with pytest.raises(SourceRefused, match="outside the store directory"):
        download.where_from(IMAGE_ID, {"type": "sftp", "region": "RegionOne",
                                       "path": f"/srv/cascading/{IMAGE_ID}"}, smap)
    api = download.where_from(IMAGE_ID, {"type": "glance", "region": "RegionOne"}, smap)
    assert api.download is smap.sources["RegionOne"].glance and api.store is None


def test_a_region_without_a_source_is_refused_for_good(tmp_path: Path) -> None:
    data = copy.deepcopy(FILE)
    del data["regions"]["RegionOne"]["source"]
    smap = agent_map(tmp_path, data)
    for source in ({"type": "glance", "region": "RegionOne"},
                   {"type": "sftp", "region": "RegionOne", "path": f"/srv/one/{IMAGE_ID}"}):
        with pytest.raises(SourceRefused, match="regions.RegionOne.source") as caught:
            download.where_from(IMAGE_ID, source, smap)
        assert not caught.value.retryable


class Glance(http.server.ThreadingHTTPServer):
    """A region's glance serving the image data: ``mode`` 206 honours a Range, 200 ignores it, 400 refuses it,
    "skew" answers another range than asked."""

    def __init__(self, mode: int | str = 206, data: bytes = DATA, cut_at: int | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode, self.data, self.cut_at = mode, data, cut_at
        self.ranges: list[str | None] = []
        self.sent = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Glance

    def do_GET(self) -> None:  # noqa: N802
        assert self.path == f"/v2/images/{IMAGE_ID}/file"
        wanted = self.headers.get("Range")
        self.server.ranges.append(wanted)
        start = 0
        if wanted and self.server.mode == 400:
            self.send_error(400, "store cannot read at an offset")
            return
        if wanted and self.server.mode in (206, "skew"):
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if self.server.mode == "skew":
                start -= 10  # a proxy in between answering another range than asked
        body = self.server.data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.server.data) - 1}/{len(self.server.data)}")
        self.end_headers()
        if self.server.cut_at is not None:
            body = body[:self.server.cut_at]  # the connection drops after these bytes
        self.wfile.write(body)
        self.server.sent += len(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def glance_api():
    servers: list[Glance] = []

    def start(**kwargs: Any) -> Glance:
        servers.append(Glance(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def fetch(tmp_path: Path, server: Glance, options: transfer.FetchOptions | None = None) -> transfer.Fetched:
    data = copy.deepcopy(FILE)
    data["regions"]["RegionOne"]["source"]["glance"]["url"] = server.url
    endpoint = agent_map(tmp_path, data).sources["RegionOne"].glance
    seen: list[int] = []
    fetched = download.fetch(endpoint, "RegionOne", image(), str(tmp_path / "x.part"),
                             lambda done, total: seen.append(done), options or transfer.FetchOptions(), lambda: None)
    assert not seen or seen[-1] == len(DATA)
    return fetched


def test_the_download_is_hashed_as_it_arrives_and_verified(tmp_path: Path, glance_api) -> None:
    server = glance_api()
    fetched = fetch(tmp_path, server)
    assert (fetched.size, fetched.os_hash_value, fetched.resumed_from) == (len(DATA), image()["os_hash_value"], 0)
    assert (tmp_path / "x.part").read_bytes() == DATA
    assert server.ranges == [None]


def test_a_kept_part_is_resumed_with_a_range_and_the_hashes_cover_every_byte(tmp_path: Path, glance_api) -> None:
    (tmp_path / "x.part").write_bytes(DATA[:30000])
    server = glance_api(mode=206)
    fetched = fetch(tmp_path, server)
    assert server.ranges == ["bytes=30000-"] and server.sent == len(DATA) - 30000
    assert (fetched.size, fetched.checksum, fetched.resumed_from) == (len(DATA), image()["checksum"], 30000)
    assert (tmp_path / "x.part").read_bytes() == DATA


def test_the_download_draws_from_the_regions_bandwidth_budget(tmp_path: Path, glance_api, monkeypatch) -> None:
    """The snapshot download is held by max_bandwidth like an SFTP fetch: it charges the shared budget
    (from where it resumes) and waits while the budget is in debt."""
    waits: list[float] = []
    monkeypatch.setattr(budget.Pacer, "_hold", lambda pacer, seconds: waits.append(seconds))  # no real sleep
    rate, path = 10_000.0, str(tmp_path / budget.BUDGET_NAME)
    budget.SharedBucket(path, rate, burst=0.0).charge(1_000_000)  # other copies' bytes: 100 s owed at the cap
    (tmp_path / "x.part").write_bytes(DATA[:30000])
    fetched = fetch(tmp_path, glance_api(mode=206), transfer.FetchOptions(rate_limit=rate, budget_file=path))
    assert fetched.size == len(DATA)
    assert budget.SharedBucket(path, rate).state().charged == 1_000_000 + len(DATA) - 30000
    assert waits and sum(waits) >= 50.0  # it waited its turn (generous: real time passed meanwhile)


@pytest.mark.parametrize("mode", [200, 400])
def test_a_glance_that_ignores_or_refuses_the_range_gives_the_whole_image(tmp_path: Path, glance_api,
                                                                          mode: int) -> None:
    (tmp_path / "x.part").write_bytes(DATA[:30000])
    server = glance_api(mode=mode)
    fetched = fetch(tmp_path, server)
    assert server.sent == len(DATA) and server.ranges[0] == "bytes=30000-"
    assert (fetched.size, fetched.os_hash_value, fetched.resumed_from) == (len(DATA), image()["os_hash_value"], 0)
    assert (tmp_path / "x.part").read_bytes() == DATA


def test_another_range_than_asked_is_not_taken_and_the_whole_image_is(tmp_path: Path, glance_api) -> None:
    (tmp_path / "x.part").write_bytes(DATA[:30000])
    server = glance_api(mode="skew")
    fetched = fetch(tmp_path, server)
    assert server.ranges == ["bytes=30000-", None]
    assert (fetched.size, fetched.os_hash_value, fetched.resumed_from) == (len(DATA), image()["os_hash_value"], 0)
    assert (tmp_path / "x.part").read_bytes() == DATA


def test_a_broken_download_is_retryable_and_the_next_attempt_resumes_it(tmp_path: Path, glance_api) -> None:
    broken = glance_api(cut_at=len(DATA) - 100)
    with pytest.raises(TransferError, match="glance of region RegionOne") as caught:
        fetch(tmp_path, broken)
    kept = len((tmp_path / "x.part").read_bytes())
    assert caught.value.retryable and 0 < kept < len(DATA)
    assert (tmp_path / "x.part").read_bytes() == DATA[:kept]
    server = glance_api()
    fetched = fetch(tmp_path, server)
    assert server.ranges == [f"bytes={kept}-"] and server.sent == len(DATA) - kept
    assert fetched.os_hash_value == image()["os_hash_value"]


def test_a_kept_prefix_with_other_bytes_fails_verification_and_is_removed(tmp_path: Path, glance_api) -> None:
    (tmp_path / "x.part").write_bytes(b"!" + DATA[1:30000])
    with pytest.raises(VerificationError) as caught:
        fetch(tmp_path, glance_api())
    assert caught.value.retryable and not (tmp_path / "x.part").exists()
    fetch(tmp_path, glance_api())  # the retry starts from byte 0
    assert (tmp_path / "x.part").read_bytes() == DATA


def test_other_bytes_are_refused_and_removed(tmp_path: Path, glance_api) -> None:
    with pytest.raises(VerificationError) as caught:
        fetch(tmp_path, glance_api(data=DATA[:-1] + b"!"))
    assert caught.value.retryable and not (tmp_path / "x.part").exists()


def test_a_whole_part_left_by_an_earlier_attempt_is_only_verified(tmp_path: Path, glance_api) -> None:
    (tmp_path / "x.part").write_bytes(DATA)
    server = glance_api()
    fetched = fetch(tmp_path, server)
    assert server.ranges == [] and fetched.resumed_from == len(DATA)
    assert fetched.os_hash_value == image()["os_hash_value"]
