"""glance-sync-manage keygen --role: the public key lands where the coordinator reads its role."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator import manage
from glancesync import keys, roles


def run(*args: str) -> int:
    try:
        return manage.main(list(args))
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("role,region,where", [
    ("agent", "RegionA", "agent/RegionA/n1.key"),
    ("sender", None, "sender/n1.key"),
    ("status", None, "status/n1.key"),
    ("operator", None, "operator/n1.key"),
])
def test_keygen_with_a_role_places_the_public_key(tmp_path: Path, capsys, role, region, where) -> None:
    allowed = tmp_path / "allowed"
    args = ["keygen", "--dir", str(tmp_path / "pair"), "--name", "n1", "--role", role,
            "--allowed-dir", str(allowed)] + (["--region", region] if region else [])
    assert run(*args) == 0
    placed = allowed / where
    assert keys.load_public(str(placed)) == keys.load_public(str(tmp_path / "pair" / "n1.key"))
    assert not list(allowed.rglob("*.key_secret"))  # the secret never goes on the allow-list
    assert str(placed) in capsys.readouterr().out
    allow = roles.AllowList(str(allowed))
    allow.load()
    assert [(p.role, p.region) for p in allow.peers.values()] == [(role, region)]


def test_keygen_takes_the_allow_list_from_the_config(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(f"[curve]\nallowed_clients_dir = {tmp_path / 'allowed'}\n")
    assert run("--config-file", str(conf), "keygen", "--dir", str(tmp_path / "p"), "--name", "s",
               "--role", "status") == 0
    assert (tmp_path / "allowed" / "status" / "s.key").is_file()


@pytest.mark.parametrize("extra,message", [
    (["--role", "agent"], "needs its region"),
    (["--role", "sender", "--region", "RegionA"], "has no region"),
    (["--region", "RegionA"], "go with --role"),
    (["--role", "agent", "--region", "../etc"], "cannot be a file name"),
])
def test_keygen_refuses_a_key_without_its_place_in_one_line(tmp_path: Path, capsys, extra, message) -> None:
    code = run("keygen", "--dir", str(tmp_path / "p"), "--name", "n", "--allowed-dir", str(tmp_path / "a"),
               *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()  # nothing made


def test_keygen_with_a_role_needs_an_allow_list(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("[curve]\nenabled = false\n")
    code = run("--config-file", str(conf), "keygen", "--dir", str(tmp_path / "p"), "--name", "n",
               "--role", "status")
    assert code == 2 and "--allowed-dir" in capsys.readouterr().err


def test_keygen_does_not_replace_a_placed_key(tmp_path: Path, capsys) -> None:
    args = ["keygen", "--dir", str(tmp_path / "p"), "--name", "n", "--role", "status",
            "--allowed-dir", str(tmp_path / "a")]
    assert run(*args) == 0
    assert run(*args) == 2 and "exists" in capsys.readouterr().err
