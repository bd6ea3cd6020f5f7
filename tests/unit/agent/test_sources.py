"""agent/sources.py: the task's sources resolved from our own config, pinned host keys, fallback in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent import sources, stream, transfer
from glancesync.exceptions import SourceRefused, TransferError, VerificationError
from glancesync.storemap import PeerSource, SshStore

IMAGE_ID = "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"
STORE = SshStore("store.example", 22, "sync", "/etc/k", "/etc/kh", "/srv/images")
PEERS = {
    "R1": PeerSource("R1", "r1.example", 2222, "peer", "/cache", ("ssh-ed25519 AAAAone",)),
    "R2": PeerSource("R2", "r2.example", 22, "peer", "/cache", ("ssh-ed25519 AAAAtwo", "ssh-rsa AAAAthree")),
}
STORE_SOURCE = {"type": "sftp", "path": f"/srv/images/{IMAGE_ID}"}


def task(*order: dict[str, Any] | None) -> dict[str, Any]:
    body = {"image_id": IMAGE_ID, "source": STORE_SOURCE}
    if order:
        body["sources"] = list(order)
    return body


def peer(region: str) -> dict[str, str]:
    return {"type": "peer", "region": region}


def test_old_task_is_the_store_only(tmp_path: Path) -> None:
    found = sources.resolve(task(), STORE, PEERS, "R3", str(tmp_path))
    assert [(s.name, s.path) for s in found] == [("cascading", f"/srv/images/{IMAGE_ID}")]


def test_peers_in_order_from_our_own_config_with_pinned_keys(tmp_path: Path) -> None:
    found = sources.resolve(task(peer("R2"), peer("R1"), STORE_SOURCE), STORE, PEERS, "R3", str(tmp_path))
    assert [s.name for s in found] == ["R2", "R1", "cascading"]
    r2 = found[0].store
    assert (r2.host, r2.port, r2.user, found[0].path) == ("r2.example", 22, "peer", f"/cache/{IMAGE_ID}")
    assert r2.private_key_file == STORE.private_key_file
    assert Path(r2.known_hosts_file).read_text() == (
        "[r1.example]:2222 ssh-ed25519 AAAAone\n"
        "r2.example ssh-ed25519 AAAAtwo\nr2.example ssh-rsa AAAAthree\n")


def test_unknown_or_own_region_skipped_store_kept_where_put(tmp_path: Path) -> None:
    found = sources.resolve(task(STORE_SOURCE, peer("R9"), peer("R3"), peer("R1")), STORE,
                            {**PEERS, "R3": PeerSource("R3", "r3.example", 22, "peer", "/cache", ("ssh-ed25519 AAAAx",))}, "R3", str(tmp_path))
    assert [s.name for s in found] == ["cascading", "R1"]


def test_store_path_outside_store_dir_still_refused(tmp_path: Path) -> None:
    bad = {"image_id": IMAGE_ID, "source": {"type": "sftp", "path": "/etc/shadow"}, "sources": [peer("R1")]}
    with pytest.raises(SourceRefused):
        sources.resolve(bad, STORE, PEERS, "R3", str(tmp_path))


def run_fetch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outcomes: dict[str, Exception | None]) -> Any:
    tried = []
    dest = tmp_path / "img.part"

    def fake_fetch(store: SshStore, image: dict, path: str, dest_path: str, *args: Any, **kw: Any) -> Any:
        tried.append(store.host)
        with open(dest_path, "ab") as out:
            out.write(b"ab")  # each source appends: the next one resumes after it
        error = outcomes[store.host]
        if error is not None:
            raise error
        return transfer.Fetched(dest_path, 4, "md5", "sha512", "v", 0.1)

    monkeypatch.setattr(transfer, "fetch", fake_fetch)
    chain = sources.resolve(task(peer("R1"), peer("R2")), STORE, PEERS, "R3", str(tmp_path))
    result = sources.fetch_any(chain, {"id": IMAGE_ID}, str(dest), lambda d, t: None, 1.0,
                               transfer.FetchOptions(), lambda: None)
    return tried, result, dest


def test_a_failing_peer_falls_back_to_the_next_keeping_the_part(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    tried, (fetched, name), dest = run_fetch(monkeypatch, tmp_path, {
        "r1.example": TransferError(image_id=IMAGE_ID, detail="connection reset"),
        "r2.example": SourceRefused(image_id=IMAGE_ID, detail="not in known_hosts"),
        "store.example": None})
    assert tried == ["r1.example", "r2.example", "store.example"]
    assert name == "cascading"
    assert dest.read_bytes() == b"ababab"  # never truncated between sources


def test_first_source_that_works_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tried, (_, name), _ = run_fetch(monkeypatch, tmp_path, {"r1.example": None})
    assert (tried, name) == (["r1.example"], "R1")


@pytest.mark.parametrize("error", [VerificationError(image_id=IMAGE_ID, detail="checksum differs"),
                                   stream.Aborted(IMAGE_ID, "the upload failed")])
def test_verification_failure_or_upload_failure_ends_the_attempt(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path, error: Exception) -> None:
    with pytest.raises(type(error)):
        run_fetch(monkeypatch, tmp_path, {"r1.example": error, "r2.example": None, "store.example": None})


def test_last_source_error_is_the_attempts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    down = TransferError(image_id=IMAGE_ID, detail="down")
    with pytest.raises(TransferError, match="down"):
        run_fetch(monkeypatch, tmp_path, {"r1.example": down, "r2.example": down, "store.example": down})


def test_a_growing_peer_is_followed_and_others_fetched_as_files(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    found = sources.resolve(task({**peer("R1"), "growing": True}, peer("R2"), STORE_SOURCE), STORE, PEERS, "R3",
                            str(tmp_path))
    assert [(s.name, s.growing) for s in found] == [("R1", True), ("R2", False), ("cascading", False)]
    calls: list[str] = []

    def followed(store: SshStore, *args: Any, **kwargs: Any) -> str:
        calls.append(f"follow {store.host}")
        raise TransferError(image_id=IMAGE_ID, detail="no new byte")

    def fetched(store: SshStore, *args: Any, **kwargs: Any) -> str:
        calls.append(f"fetch {store.host}")
        return "ok"

    monkeypatch.setattr(sources.growing, "fetch", followed)
    monkeypatch.setattr(transfer, "fetch", fetched)
    result = sources.fetch_any(found, {"id": IMAGE_ID}, str(tmp_path / "p"), lambda d, t: None, 5.0,
                               transfer.FetchOptions(), lambda: None)
    assert result == ("ok", "R2") and calls == ["follow r1.example", "fetch r2.example"]
