"""Sources in a region (agent/download.py): which account reads a snapshot, and the verified download."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import download, transfer
from glancesync import glance, storemap
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


class FakeImages:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def data(self, image_id: str, do_checksum: bool = True) -> Any:
        assert image_id == IMAGE_ID and do_checksum is False  # our own hashes verify it
        return iter(self.chunks)


def fetch(tmp_path: Path, monkeypatch, chunks: list[bytes]) -> transfer.Fetched:
    endpoint = agent_map(tmp_path).sources["RegionOne"].glance
    monkeypatch.setattr(glance, "make_client", lambda ep: type("C", (), {"images": FakeImages(chunks)})())
    seen: list[int] = []
    fetched = download.fetch(endpoint, "RegionOne", image(), str(tmp_path / "x.part"),
                             lambda done, total: seen.append(done), transfer.FetchOptions(), lambda: None)
    assert seen[-1] == len(DATA)
    return fetched


def test_the_download_is_hashed_as_it_arrives_and_verified(tmp_path: Path, monkeypatch) -> None:
    fetched = fetch(tmp_path, monkeypatch, [DATA[:1000], DATA[1000:]])
    assert (fetched.size, fetched.os_hash_value) == (len(DATA), image()["os_hash_value"])
    assert (tmp_path / "x.part").read_bytes() == DATA


def test_other_bytes_are_refused_and_removed(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(VerificationError) as caught:
        fetch(tmp_path, monkeypatch, [DATA[:-1] + b"!"])
    assert caught.value.retryable and not (tmp_path / "x.part").exists()


def test_a_broken_stream_is_a_retryable_transfer_error(tmp_path: Path, monkeypatch) -> None:
    def broken():
        yield DATA[:10]
        raise ConnectionError("reset by peer")

    monkeypatch.setattr(FakeImages, "data", lambda self, image_id, do_checksum=True: broken())
    with pytest.raises(TransferError, match="reset by peer") as caught:
        fetch(tmp_path, monkeypatch, [])
    assert caught.value.retryable
