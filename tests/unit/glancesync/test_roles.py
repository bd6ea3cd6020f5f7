"""glancesync.roles: the allow-list layout read into a role map, and its live reload."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from glancesync import keys, roles
from glancesync.exceptions import KeyLoadError


def place(tmp_path: Path, allowed: Path, role: str, name: str, region: str | None = None) -> str:
    """Make a key pair and put its public key where ``role`` needs it; returns the z85 public key."""
    public_file, _ = keys.generate(str(tmp_path / "pairs"), name)
    target = Path(roles.key_path(str(allowed), role, name, region))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(public_file, target)
    return keys.load_public(public_file).decode("ascii")


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    path = tmp_path / "allowed"
    path.mkdir()
    return path


def test_where_a_key_sits_is_its_role(tmp_path: Path, allowed: Path) -> None:
    a = place(tmp_path, allowed, "agent", "a1", "RegionA")
    s = place(tmp_path, allowed, "sender", "glance-api")
    q = place(tmp_path, allowed, "status", "ops-status")
    o = place(tmp_path, allowed, "operator", "admin")
    allow = roles.AllowList(str(allowed))
    allow.load()
    assert allow.lookup(a) == roles.Peer("agent", "agent/RegionA/a1.key", "RegionA")
    assert allow.lookup(s) == roles.Peer("sender", "sender/glance-api.key")
    assert allow.lookup(q).role == "status" and allow.lookup(o).role == "operator"
    assert allow.lookup("not-a-key") is None and allow.lookup(None) is None


def test_what_each_role_may_send() -> None:
    agent, sender = roles.Peer("agent", "x", "R"), roles.Peer("sender", "x")
    status, operator = roles.Peer("status", "x"), roles.Peer("operator", "x")
    assert agent.may_send("hello") and agent.may_send("done")
    assert not agent.may_send("event") and not agent.may_send("status_query")
    assert sender.may_send("event") and not sender.may_send("status_query") and not sender.may_send("hello")
    assert status.may_send("status_query") and not status.may_send("event") and not status.may_send("ready")
    assert operator.may_send("event") and operator.may_send("status_query") and not operator.may_send("hello")
    assert roles.LOCAL.may_send("event") and roles.LOCAL.may_send("hello")


def test_a_key_of_the_old_layout_stops_the_start_saying_where_to_move_it(tmp_path: Path,
                                                                         allowed: Path) -> None:
    place(tmp_path, allowed, "status", "ok")
    public_file, _ = keys.generate(str(tmp_path / "pairs"), "legacy")
    shutil.copy(public_file, allowed / "legacy.key")
    with pytest.raises(KeyLoadError) as info:
        roles.AllowList(str(allowed)).load()
    message = str(info.value)
    assert "legacy.key" in message and "agent/<region>/" in message and "\n" not in message


@pytest.mark.parametrize("bad", ["agent-without-region", "unknown-role", "garbage"])
def test_misplaced_or_broken_keys_stop_the_start(tmp_path: Path, allowed: Path, bad: str) -> None:
    place(tmp_path, allowed, "status", "ok")
    public_file, _ = keys.generate(str(tmp_path / "pairs"), "k")
    if bad == "agent-without-region":
        (allowed / "agent").mkdir()
        shutil.copy(public_file, allowed / "agent" / "k.key")
    elif bad == "unknown-role":
        (allowed / "admins").mkdir()
        shutil.copy(public_file, allowed / "admins" / "k.key")
    else:
        (allowed / "sender").mkdir()
        (allowed / "sender" / "k.key").write_text("not a key\n")
    with pytest.raises(KeyLoadError):
        roles.AllowList(str(allowed)).load()


def test_one_key_in_two_roles_holds_neither(tmp_path: Path, allowed: Path) -> None:
    key = place(tmp_path, allowed, "status", "twice")
    shutil.copytree(allowed / "status", allowed / "operator")
    peers, problems = roles.scan(str(allowed))
    assert key not in peers and len(problems) == 1 and "refused in both" in problems[0]


def test_an_empty_or_missing_allow_list_stops_the_start(tmp_path: Path, allowed: Path) -> None:
    with pytest.raises(KeyLoadError) as info:
        roles.AllowList(str(allowed)).load()
    assert "no .key file" in str(info.value)
    with pytest.raises(KeyLoadError):
        roles.AllowList(str(tmp_path / "missing")).load()
    with pytest.raises(KeyLoadError):
        roles.AllowList("").load()


def test_reload_sees_added_and_removed_keys_and_nothing_else(tmp_path: Path, allowed: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="glancesync.roles")
    first = place(tmp_path, allowed, "agent", "a1", "RegionA")
    allow = roles.AllowList(str(allowed))
    allow.load()
    assert allow.refresh() is False  # nothing changed: no re-read
    second = place(tmp_path, allowed, "status", "s1")
    assert allow.refresh() is True
    assert allow.lookup(second).role == "status"
    os.unlink(allowed / "agent" / "RegionA" / "a1.key")
    assert allow.refresh() is True
    assert allow.lookup(first) is None
    assert allow.describe(first) == "agent/RegionA/a1.key"  # a revoked key is still named in refusals
    assert "removed: agent/RegionA/a1.key" in caplog.text
    assert allow.refresh(force=True) is True  # SIGHUP re-reads even when nothing changed


def test_a_key_moved_to_another_region_changes_its_region(tmp_path: Path, allowed: Path) -> None:
    key = place(tmp_path, allowed, "agent", "a1", "RegionA")
    allow = roles.AllowList(str(allowed))
    allow.load()
    (allowed / "agent" / "RegionB").mkdir()
    os.rename(allowed / "agent" / "RegionA" / "a1.key", allowed / "agent" / "RegionB" / "a1.key")
    assert allow.refresh() is True
    assert allow.lookup(key).region == "RegionB"


def test_a_bad_file_on_reload_is_left_out_and_the_rest_kept(tmp_path: Path, allowed: Path, caplog) -> None:
    good = place(tmp_path, allowed, "status", "good")
    allow = roles.AllowList(str(allowed))
    allow.load()
    public_file, _ = keys.generate(str(tmp_path / "pairs"), "legacy")
    shutil.copy(public_file, allowed / "legacy.key")
    assert allow.refresh() is True
    assert allow.lookup(good) is not None
    assert allow.lookup(keys.load_public(public_file).decode()) is None
    assert "legacy.key" in caplog.text


def test_a_vanished_directory_admits_nobody(tmp_path: Path, allowed: Path) -> None:
    key = place(tmp_path, allowed, "status", "s1")
    allow = roles.AllowList(str(allowed))
    allow.load()
    shutil.rmtree(allowed)
    assert allow.refresh() is True
    assert allow.lookup(key) is None
    assert allow.refresh() is False  # still gone: not logged again


def test_the_zap_callback_follows_the_current_map(tmp_path: Path, allowed: Path, caplog) -> None:
    key = place(tmp_path, allowed, "sender", "p1")
    allow = roles.AllowList(str(allowed))
    allow.load()
    assert allow.callback("*", key.encode()) is True
    os.unlink(allowed / "sender" / "p1.key")
    allow.refresh()
    assert allow.callback("*", key.encode()) is False
    allow.callback("*", key.encode())  # a reconnect loop: logged once
    assert caplog.text.count("sender/p1.key was removed") == 1


@pytest.mark.parametrize("role,region,expected", [
    ("agent", "RegionA", "D/agent/RegionA/n.key"),
    ("sender", None, "D/sender/n.key"),
    ("status", None, "D/status/n.key"),
    ("operator", None, "D/operator/n.key"),
])
def test_key_path(role: str, region: str | None, expected: str) -> None:
    assert roles.key_path("D", role, "n", region) == expected


@pytest.mark.parametrize("role,region,name", [
    ("agent", None, "n"), ("sender", "RegionA", "n"), ("admin", None, "n"), ("status", None, "../n"),
    ("agent", "..", "n"), ("status", None, ""),
])
def test_key_path_refuses_what_has_no_place(role: str, region: str | None, name: str) -> None:
    with pytest.raises(ValueError):
        roles.key_path("D", role, name, region)
