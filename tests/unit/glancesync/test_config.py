"""glancesync.config: one line and exit code 2 for any configuration that does not load."""

from __future__ import annotations

from pathlib import Path

import pytest

from glancesync import config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "glance-sync.conf"
    path.write_text(text)
    return str(path)


def test_values_from_the_file(tmp_path: Path) -> None:
    conf_file = write(tmp_path, "[DEFAULT]\nsync_server_port = 9999\n[agent]\nregion = RegionOne\n")
    conf = config.load(["--config-file", conf_file], "glance-sync-test", setup_logging=False)
    assert conf.sync_server_port == 9999
    assert conf.agent.region == "RegionOne"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[DEFAULT]\nsync_server_port = abc\n", "sync_server_port"),
        ("[agent]\nworkers = 0\n", "workers"),
        ("[curve]\nenabled = maybe\n", "enabled"),
        ("[DEFAULT]\nsync_strategy = SOME\n", "sync_strategy"),
        ("this is not ini\n", "glance-sync.conf"),
    ],
)
def test_bad_value_is_one_line_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, named: str
) -> None:
    conf_file = write(tmp_path, text)
    with pytest.raises(SystemExit) as info:
        config.load(["--config-file", conf_file], "glance-sync-test", setup_logging=False)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("glance-sync-test: configuration error:") and err.count("\n") == 1
    assert named in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        config.load(["--config-file", str(tmp_path / "absent.conf")], "glance-sync-test", setup_logging=False)
    assert info.value.code == 2
    assert "absent.conf" in capsys.readouterr().err


def test_fail_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        config.fail("glance-sync-test", "region RegionNine is not in glance_store.yaml", code=3)
    assert info.value.code == 3
    assert capsys.readouterr().err == "glance-sync-test: region RegionNine is not in glance_store.yaml\n"
