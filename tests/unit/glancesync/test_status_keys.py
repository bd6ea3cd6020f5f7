"""glance-sync-status connects with its own status key, not the service key of the config it reads."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from glancesync import keys, status


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def service_conf(tmp_path: Path) -> Path:
    """A coordinator's config: secret_key_file is the coordinator's own (loadable) key."""
    public, secret = keys.generate(str(tmp_path / "k"), "coordinator")
    path = tmp_path / "glance-sync.conf"
    path.write_text(f"[curve]\nenabled = true\nsecret_key_file = {secret}\nserver_public_key_file = {public}\n")
    return path


def test_key_file_argument_wins(service_conf: Path, tmp_path: Path, capsys) -> None:
    with service_conf.open("a") as conf:
        conf.write(f"status_secret_key_file = {tmp_path}/from-conf.key_secret\n")
    code = status.main(["--config-file", str(service_conf), "--port", str(closed_port()),
                        "--key-file", str(tmp_path / "mine.key_secret")])
    assert code == 2 and "mine.key_secret" in capsys.readouterr().err


def test_status_secret_key_file_comes_before_the_service_key(service_conf: Path, tmp_path: Path, capsys) -> None:
    with service_conf.open("a") as conf:
        conf.write(f"status_secret_key_file = {tmp_path}/status.key_secret\n")
    code = status.main(["--config-file", str(service_conf), "--port", str(closed_port())])
    assert code == 2 and "status.key_secret" in capsys.readouterr().err
