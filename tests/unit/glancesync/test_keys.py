"""glancesync.keys: CurveZMQ key files, failing closed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from glancesync import keys
from glancesync.exceptions import KeyLoadError


def test_generate_writes_a_private_secret(tmp_path: Path) -> None:
    public_file, secret_file = keys.generate(str(tmp_path / "k"), "server")
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    public, secret = keys.load_secret(secret_file)
    assert len(public) == 40 and len(secret) == 40
    assert keys.load_public(public_file) == public


def test_group_readable_secret_is_refused(tmp_path: Path) -> None:
    _, secret_file = keys.generate(str(tmp_path), "server")
    os.chmod(secret_file, 0o640)
    with pytest.raises(KeyLoadError) as info:
        keys.load_secret(secret_file)
    assert secret_file in str(info.value)
    assert "640" in str(info.value)


def test_missing_secret_file(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError) as info:
        keys.load_secret(str(tmp_path / "nope.key_secret"))
    assert "nope.key_secret" in str(info.value)


def test_missing_public_file(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError):
        keys.load_public(str(tmp_path / "nope.key"))


def test_public_file_is_not_a_secret(tmp_path: Path) -> None:
    public_file, _ = keys.generate(str(tmp_path), "client")
    os.chmod(public_file, 0o600)
    with pytest.raises(KeyLoadError) as info:
        keys.load_secret(public_file)
    assert "no secret" in str(info.value)


def test_garbage_key_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.key_secret"
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    with pytest.raises(KeyLoadError):
        keys.load_secret(str(path))
