"""A snapshot's download from a real glance-api resumes its ``.part`` with a Range (agent/download.py).

One glance-api (file store, which reads at an offset): glance answers the agent's
``Range: bytes=N-`` with 206, so a second attempt fetches only the rest, and the
result is verified over every byte (the kept prefix hashed first).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import download, transfer
from glancesync.exceptions import VerificationError
from glancesync.storemap import GlanceEndpoint
from tests.harness.glance import IDENTITY_HEADERS, GlanceServer

DATA = os.urandom(2 * 1024 * 1024 + 333)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceServer]:
    base = tmp_path_factory.mktemp("snapdownload")
    server = GlanceServer("RegionA", base / "RegionA", template_dir=base / "template")
    try:
        yield server.start()
    finally:
        server.stop()


def _image(region: GlanceServer) -> dict:
    client = region.client()
    made = client.images.create(name="snap", disk_format="raw", container_format="bare")
    client.images.upload(made["id"], io.BytesIO(DATA))
    return dict(client.images.get(made["id"]))


def _fetch(region: GlanceServer, image: dict, dest: Path) -> transfer.Fetched:
    endpoint = GlanceEndpoint(url=region.url, headers=dict(IDENTITY_HEADERS))
    return download.fetch(endpoint, "RegionA", image, str(dest), lambda done, total: None,
                          transfer.FetchOptions(), lambda: None)


def test_a_kept_part_is_resumed_from_glance_with_a_range(region: GlanceServer, tmp_path: Path) -> None:
    image = _image(region)
    dest = tmp_path / f"{image['id']}.part"
    kept = 1024 * 1024 + 5
    dest.write_bytes(DATA[:kept])
    fetched = _fetch(region, image, dest)
    assert fetched.resumed_from == kept  # glance answered 206 from that byte
    assert dest.read_bytes() == DATA
    assert (fetched.size, fetched.os_hash_value) == (len(DATA), hashlib.sha512(DATA).hexdigest())


def test_a_kept_part_with_other_bytes_is_refused_and_removed(region: GlanceServer, tmp_path: Path) -> None:
    image = _image(region)
    dest = tmp_path / f"{image['id']}.part"
    dest.write_bytes(b"x" * 4096)
    with pytest.raises(VerificationError):
        _fetch(region, image, dest)
    assert not dest.exists()
    assert _fetch(region, image, dest).resumed_from == 0 and dest.read_bytes() == DATA
