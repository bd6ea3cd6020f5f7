"""glancesync.marker: the loop-guard HMAC that a client cannot forge, and its secret file."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from glancesync import marker
from glancesync.exceptions import KeyLoadError

SECRET = b"0123456789abcdef0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0
PATH = b"/v2/images/1b2c3d4e-0000-4000-8000-000000000001"


def test_a_signed_request_checks_valid() -> None:
    value = marker.sign(SECRET, "PATCH", PATH, NOW)
    version, timestamp, mac = value.split(":")
    assert (version, timestamp, len(mac)) == ("v1", str(int(NOW)), 64)
    assert marker.check(SECRET, value, "PATCH", PATH, NOW) == (True, "valid")
    # The receiver's clock may be ahead or behind by up to MAX_SKEW.
    assert marker.check(SECRET, value, "patch", PATH, NOW + marker.MAX_SKEW)[0]
    assert marker.check(SECRET, value, "PATCH", PATH, NOW - marker.MAX_SKEW)[0]


def test_the_mac_is_hmac_sha256_over_version_method_target_and_time() -> None:
    expected = hmac.new(SECRET, b"v1\nGET\n/v2/images?limit=1\n1800000000", hashlib.sha256).hexdigest()
    assert marker.sign(SECRET, "get", b"/v2/images?limit=1", NOW) == f"v1:1800000000:{expected}"


def test_a_wrong_secret_is_refused() -> None:
    value = marker.sign(b"another-secret-of-32-characters-at-least", "PATCH", PATH, NOW)
    assert marker.check(SECRET, value, "PATCH", PATH, NOW) == (False, "wrong MAC")


@pytest.mark.parametrize("method, target", [
    ("DELETE", PATH),
    ("PATCH", PATH + b"0"),
    ("PATCH", b"/v2/images/1b2c3d4e-0000-4000-8000-000000000002"),
    ("PATCH", PATH + b"?x=1"),
])  # fmt: skip
def test_a_marker_for_another_method_or_path_is_refused(method: str, target: bytes) -> None:
    value = marker.sign(SECRET, "PATCH", PATH, NOW)
    assert marker.check(SECRET, value, method, target, NOW) == (False, "wrong MAC")


@pytest.mark.parametrize("offset", [marker.MAX_SKEW + 1, -(marker.MAX_SKEW + 1), 86400, -86400])
def test_a_stale_or_future_marker_is_refused(offset: float) -> None:
    value = marker.sign(SECRET, "PATCH", PATH, NOW)
    trusted, reason = marker.check(SECRET, value, "PATCH", PATH, NOW + offset)
    assert not trusted and "away from now" in reason


def test_a_tampered_time_is_refused() -> None:
    _, _, mac = marker.sign(SECRET, "PATCH", PATH, NOW).split(":")
    assert marker.check(SECRET, f"v1:{int(NOW) + 1}:{mac}", "PATCH", PATH, NOW) == (False, "wrong MAC")


@pytest.mark.parametrize("value", [
    "1", "", "true", "v1", "v1:1800000000", "v2:1800000000:" + "0" * 64, "v1:abc:" + "0" * 64,
    "v1:1800000000:" + "0" * 63, "v1:1800000000:" + "G" * 64, "v1:-1:" + "0" * 64,
    "v1:1800000000:" + "0" * 64 + ":x", "v1:1800000000000000:" + "0" * 64,
])  # fmt: skip
def test_malformed_values_are_refused(value: str) -> None:
    trusted, reason = marker.check(SECRET, value, "PATCH", PATH, NOW)
    assert not trusted and reason == "malformed marker"


def test_without_a_secret_nothing_is_trusted() -> None:
    value = marker.sign(SECRET, "PATCH", PATH, NOW)
    assert marker.check(None, value, "PATCH", PATH, NOW) == (False, "no secret configured")
    assert marker.check(b"", value, "PATCH", PATH, NOW) == (False, "no secret configured")
    assert marker.check(SECRET, None, "PATCH", PATH, NOW) == (False, "no marker")


def test_client_url_and_server_path_give_the_same_target() -> None:
    # What requests sends (percent-encoded, behind a /image prefix) and what the
    # WSGI server hands the filter (decoded, latin-1) must sign alike.
    url = "https://glance.example.com/image/v2/images/abc/tags/a%20b%2Fc?limit=2&marker=x%20y"
    server_path = "/v2/images/abc/tags/a b/c".encode("latin-1")
    assert marker.url_target(url) == marker.request_target(server_path, "limit=2&marker=x%20y")
    assert marker.url_target("http://h:9292/v2.1/images") == b"/v2.1/images"
    assert marker.request_target(b"/versions") == b"/versions"


def test_write_secret_makes_a_private_file_that_loads(tmp_path: Path) -> None:
    path = tmp_path / "internal.secret"
    marker.write_secret(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    secret = marker.load_secret(str(path))
    assert len(secret) == 2 * marker.SECRET_BYTES and secret == path.read_bytes().strip()
    other = tmp_path / "other.secret"
    marker.write_secret(str(other))
    assert marker.load_secret(str(other)) != secret


def test_write_secret_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "internal.secret"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        marker.write_secret(str(path))
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_secret_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "internal.secret"
    marker.write_secret(str(path))
    os.chmod(path, mode)
    with pytest.raises(KeyLoadError) as info:
        marker.load_secret(str(path))
    assert str(path) in str(info.value) and f"{mode:o}" in str(info.value) and "chmod 600" in str(info.value)


def test_missing_short_or_odd_secret_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError, match="nope"):
        marker.load_secret(str(tmp_path / "nope"))
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    os.chmod(short, 0o600)
    with pytest.raises(KeyLoadError, match="at least 32") as info:
        marker.load_secret(str(short))
    assert "tooshort" not in str(info.value)  # the content never reaches a message
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyLoadError, match="not a regular file"):
        marker.load_secret(str(directory))

