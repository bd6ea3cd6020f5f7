"""glancesync.storemap: glance_store.yaml into dataclasses, errors naming the file and the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from glancesync import storemap
from glancesync.exceptions import ConfigError, SourceRefused

SAMPLE = Path(__file__).resolve().parents[3] / "etc" / "glance_store.yaml.sample"

GOOD: dict[str, Any] = {
    "cascading": {
        "glance": {"url": "http://cascading:9292", "auth": {"auth_type": "password", "password": "hunter2"}},
        "store": {
            "host": "store.example.com",
            "port": 2222,
            "user": "glancesync",
            "private_key_file": "/etc/glance-sync/id_ed25519",
            "known_hosts_file": "/etc/glance-sync/known_hosts",
            "store_dir": "/var/lib/glance/images",
        },
    },
    "regions": {
        "RegionOne": {"glance": {"url": "http://one:9292"}, "work_dir": "/var/lib/glance-sync/work"},
        "RegionTwo": {
            "glance": {"url": "https://two:9292", "headers": {"X-Roles": "admin"}, "verify": "/etc/ca.pem"},
            "work_dir": "/srv/work",
        },
    },
}


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "glance_store.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_good_file_loads(tmp_path: Path) -> None:
    smap = storemap.load(write(tmp_path, GOOD))
    assert smap.store is not None and smap.store.store_dir == "/var/lib/glance/images"
    assert sorted(smap.regions) == ["RegionOne", "RegionTwo"]
    two = smap.region("RegionTwo")
    assert two.glance.url == "https://two:9292"
    assert two.glance.headers == {"X-Roles": "admin"}
    assert two.glance.verify == "/etc/ca.pem"
    assert two.glance.auth == {"auth_type": "none"}
    assert smap.cascading_glance is not None and smap.cascading_glance.auth["password"] == "hunter2"


def test_agent_loads_its_region_and_the_sftp_account_only(tmp_path: Path) -> None:
    smap = storemap.load(write(tmp_path, GOOD), storemap.Role.AGENT, "RegionTwo")
    assert smap.store is not None and smap.store.host == "store.example.com" and smap.store.port == 2222
    assert smap.store.private_key_file == "/etc/glance-sync/id_ed25519" and smap.store.sftp_root is None
    assert list(smap.regions) == ["RegionTwo"] and smap.region("RegionTwo").work_dir == "/srv/work"
    # The cascading glance's admin credentials are not the agent's business.
    assert smap.cascading_glance is None


def test_coordinator_does_not_hold_the_sftp_account(tmp_path: Path) -> None:
    smap = storemap.load(write(tmp_path, GOOD), storemap.Role.COORDINATOR)
    assert smap.store is not None
    assert (smap.store.host, smap.store.private_key_file, smap.store.known_hosts_file) == (None, None, None)


def test_checked_in_samples_load_for_every_role(tmp_path: Path) -> None:
    import shutil

    (tmp_path / "regions.d").mkdir()
    shutil.copy(SAMPLE, tmp_path / "glance_store.yaml")
    shutil.copy(SAMPLE.parent / "regions.d" / "RegionOne.yaml.sample", tmp_path / "regions.d" / "RegionOne.yaml")
    path = str(tmp_path / "glance_store.yaml")
    coordinator = storemap.load(path)
    assert sorted(coordinator.regions) == ["RegionOne", "RegionTwo"] and coordinator.store.scheme == "file"
    assert coordinator.region("RegionOne").glance.auth["username"] == "glance-sync-regionone"
    assert sorted(storemap.load(path, storemap.Role.DRIVER).regions) == ["RegionOne", "RegionTwo"]
    for region in ("RegionOne", "RegionTwo"):
        agent = storemap.load(path, storemap.Role.AGENT, region)
        assert agent.store.sftp_root == "/srv/glance-store" and agent.region(region).work_dir


def test_unknown_region_names_the_known_ones(tmp_path: Path) -> None:
    smap = storemap.load(write(tmp_path, GOOD))
    with pytest.raises(ConfigError) as info:
        smap.region("RegionNine")
    assert "RegionNine" in str(info.value) and "RegionOne, RegionTwo" in str(info.value)


def _broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("cascading", "store", "host"), _DELETE, "cascading.store.host"),
        (("cascading", "store", "user"), "", "cascading.store.user"),
        (("cascading", "store", "private_key_file"), 5, "cascading.store.private_key_file"),
        (("cascading", "store", "private_key_file"), _DELETE, "cascading.store.private_key_file"),
        (("cascading", "store", "known_hosts_file"), _DELETE, "cascading.store.known_hosts_file"),
        (("cascading", "store", "port"), True, "cascading.store.port"),
        (("cascading", "store", "port"), 70000, "cascading.store.port"),
        (("cascading", "store", "sftp_root"), "relative", "cascading.store.sftp_root"),
        (("cascading", "store", "sftp_root"), "/srv/other", "cascading.store.store_dir must be inside sftp_root"),
        (("cascading", "store", "sftp_root"), "/var/lib/glance/images/sub", "cascading.store.store_dir"),
        (("regions", "RegionOne", "work_dir"), _DELETE, "regions.RegionOne.work_dir"),
    ],
)
def test_bad_agent_key_names_key_and_file(tmp_path: Path, path: tuple[str, ...], value: Any, named: str) -> None:
    """What only the agent reads (the SFTP account, its work_dir) is checked when the agent loads it."""
    filename = write(tmp_path, _broken(path, value))
    storemap.load(filename, storemap.Role.COORDINATOR)  # not the coordinator's business
    with pytest.raises(ConfigError) as info:
        storemap.load(filename, storemap.Role.AGENT, "RegionOne")
    assert named in str(info.value)
    assert filename in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("cascading", "store", "store_dir"), "relative/dir", "cascading.store.store_dir"),
        (("cascading", "store", "scheme"), "rbd", "cascading.store.scheme"),
        (("cascading", "store"), _DELETE, "cascading.store"),
        (("cascading", "glance", "url"), "ftp://x", "cascading.glance.url"),
        (("cascading", "glance", "auth"), "password", "cascading.glance.auth"),
        (("regions",), {}, "regions"),
        (("regions",), ["RegionOne"], "regions"),
        (("regions", "RegionOne", "glance"), _DELETE, "regions.RegionOne.glance.url"),
        (("regions", "RegionOne", "glance", "headers"), ["X"], "regions.RegionOne.glance.headers"),
        (("regions", "RegionTwo", "glance", "verify"), 3, "regions.RegionTwo.glance.verify"),
        (("regions", "RegionTwo"), "oops", "regions.RegionTwo"),
    ],
)
def test_bad_key_names_key_and_file(tmp_path: Path, path: tuple[str, ...], value: Any, named: str) -> None:
    filename = write(tmp_path, _broken(path, value))
    with pytest.raises(ConfigError) as info:
        storemap.load(filename)
    assert named in str(info.value)
    assert filename in str(info.value)


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    filename = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError) as info:
        storemap.load(filename)
    assert "top level" in str(info.value) and filename in str(info.value)


def test_not_yaml(tmp_path: Path) -> None:
    filename = write(tmp_path, "cascading: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        storemap.load(filename)
    assert filename in str(info.value) and "YAML" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        storemap.load(str(tmp_path / "absent.yaml"))
    assert "absent.yaml" in str(info.value)


@pytest.fixture
def smap(tmp_path: Path) -> storemap.StoreMap:
    return storemap.load(write(tmp_path, GOOD))


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///var/lib/glance/images/img-1", "/var/lib/glance/images/img-1"),
        ("file://localhost/var/lib/glance/images/img-1", "/var/lib/glance/images/img-1"),
        ("file:///var/lib/glance/images/./sub/../img-2", "/var/lib/glance/images/img-2"),
        ("file:///var/lib/glance/images/img%2D3", "/var/lib/glance/images/img-3"),
    ],
)
def test_source_path_inside_store(smap: storemap.StoreMap, url: str, path: str) -> None:
    assert smap.source_path("img", url) == path


@pytest.mark.parametrize(
    "url",
    [
        "file:///var/lib/glance/images/../../../etc/shadow",
        "file:///var/lib/glance/images/%2E%2E/secret",
        "file:///var/lib/glance/images-other/img",
        "file:///etc/passwd",
        "file:///var/lib/glance/images",
        "file:///var/lib/glance/images/",
        "file:///var/lib/glance/images/.",
        "file://otherhost/var/lib/glance/images/img",
        "file://user@localhost/var/lib/glance/images/img",
        "http://glance/var/lib/glance/images/img",
        "rbd://pool/img",
        "cascaded://RegionOne/img",
        "file:relative/img",
        "file:///var/lib/glance/images/img%00.txt",
    ],
)
def test_source_path_refuses(smap: storemap.StoreMap, url: str) -> None:
    with pytest.raises(SourceRefused) as info:
        smap.source_path("img-9", url)
    assert "img-9" in str(info.value)
    assert info.value.retryable is False


def test_endpoint_repr_hides_secrets() -> None:
    endpoint = storemap.GlanceEndpoint(
        url="http://g:9292",
        auth={"auth_type": "password", "username": "sync", "password": "hunter2",
              "application_credential_secret": "s3cr3t"},
    )
    shown = repr(endpoint)
    assert "hunter2" not in shown and "s3cr3t" not in shown
    assert "sync" in shown and "***" in shown


def test_storemap_repr_hides_secrets(smap: storemap.StoreMap) -> None:
    assert "hunter2" not in repr(smap)


def test_endpoint_timeout_defaults_and_is_checked(tmp_path) -> None:
    data = {"cascading": {"store": {"host": "h", "user": "u", "private_key_file": "k",
                                    "known_hosts_file": "kh", "store_dir": "/srv"}},
            "regions": {"A": {"glance": {"url": "http://a:9292"}, "work_dir": "/w"}}}
    loaded = storemap.parse(data, "f.yaml")
    assert loaded.region("A").glance.timeout == storemap.DEFAULT_HTTP_TIMEOUT
    data["regions"]["A"]["glance"]["timeout"] = 0
    with pytest.raises(ConfigError, match=r"f.yaml: regions.A.glance.timeout must be a positive number"):
        storemap.parse(data, "f.yaml")


def test_session_carries_the_endpoint_timeout() -> None:
    from glancesync import glance

    endpoint = storemap.GlanceEndpoint(url="http://a:9292", timeout=7.5)
    assert glance.make_session(endpoint).timeout == 7.5


def test_repr_masks_every_secret_looking_auth_option() -> None:
    endpoint = storemap.GlanceEndpoint(url="http://a", auth={
        "auth_type": "v3oidcpassword", "username": "sync", "password": "pw1", "client_secret": "cs2",
        "passcode": "pc3", "application_credential_secret": "acs4", "access_token": "tok5"})
    text = repr(endpoint)
    assert "sync" in text
    for secret in ("pw1", "cs2", "pc3", "acs4", "tok5"):
        assert secret not in text


def test_translated_glance_errors_mask_secrets() -> None:
    from glancesync import glance

    error = glance.translate(RuntimeError('failed: {"password": "hunter2", "X-Auth-Token": "abc"}'), "http://g")
    assert "hunter2" not in str(error)


# -- per-host files: each region's glance in its own file --------------------------------------

def _split_layout(tmp_path: Path) -> tuple[str, Path]:
    """glance_store.yaml naming regions.d/<region>.yaml; only RegionOne's file exists."""
    data = copy.deepcopy(GOOD)
    for name in data["regions"]:
        del data["regions"][name]["glance"]
        data["regions"][name]["glance_file"] = f"regions.d/{name}.yaml"
    (tmp_path / "regions.d").mkdir()
    (tmp_path / "regions.d" / "RegionOne.yaml").write_text(yaml.safe_dump(
        {"glance": {"url": "http://one:9292", "auth": {"auth_type": "password", "password": "one-secret"}}}))
    return write(tmp_path, data), tmp_path / "regions.d"


def _opened_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import builtins

    opened: list[str] = []
    real_open = builtins.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    return opened


def test_agent_never_opens_another_regions_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    filename, regions_d = _split_layout(tmp_path)
    # RegionTwo's file is a directory here: opening it would fail, so would a missing one.
    (regions_d / "RegionTwo.yaml").mkdir()
    opened = _opened_paths(monkeypatch)
    smap = storemap.load(filename, storemap.Role.AGENT, "RegionOne")
    assert list(smap.regions) == ["RegionOne"]
    assert smap.region("RegionOne").glance.auth["password"] == "one-secret"
    assert smap.region("RegionOne").work_dir == "/var/lib/glance-sync/work"
    assert opened == [filename, str(regions_d / "RegionOne.yaml")]


def test_agent_of_a_region_whose_file_is_missing_names_it(tmp_path: Path) -> None:
    filename, regions_d = _split_layout(tmp_path)
    with pytest.raises(ConfigError) as info:
        storemap.load(filename, storemap.Role.AGENT, "RegionTwo")
    text = str(info.value)
    assert str(regions_d / "RegionTwo.yaml") in text and "cannot read" in text
    assert "regions.RegionTwo.glance_file" in text and filename in text


def test_coordinator_reads_every_regions_file(tmp_path: Path) -> None:
    filename, regions_d = _split_layout(tmp_path)
    with pytest.raises(ConfigError, match="RegionTwo.yaml"):
        storemap.load(filename, storemap.Role.COORDINATOR)
    (regions_d / "RegionTwo.yaml").write_text(yaml.safe_dump({"glance": {"url": "http://two:9292"}}))
    smap = storemap.load(filename, storemap.Role.COORDINATOR)
    assert smap.region("RegionTwo").glance.url == "http://two:9292"
    assert smap.region("RegionOne").glance.auth["password"] == "one-secret"


def test_region_file_errors_name_that_file_and_key(tmp_path: Path) -> None:
    filename, regions_d = _split_layout(tmp_path)
    (regions_d / "RegionOne.yaml").write_text(yaml.safe_dump({"glance": {"url": "ftp://one"}}))
    with pytest.raises(ConfigError) as info:
        storemap.load(filename, storemap.Role.AGENT, "RegionOne")
    assert str(regions_d / "RegionOne.yaml") in str(info.value) and "glance.url" in str(info.value)


def test_glance_and_glance_file_together_are_refused(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["regions"]["RegionOne"]["glance_file"] = "one.yaml"
    with pytest.raises(ConfigError, match="regions.RegionOne: give glance or glance_file, not both"):
        storemap.load(write(tmp_path, data))


def test_absolute_glance_file(tmp_path: Path) -> None:
    own = tmp_path / "elsewhere" / "one.yaml"
    own.parent.mkdir()
    own.write_text(yaml.safe_dump({"glance": {"url": "http://one:9292"}}))
    data = copy.deepcopy(GOOD)
    data["regions"]["RegionOne"] = {"glance_file": str(own), "work_dir": "/w"}
    assert storemap.load(write(tmp_path, data)).region("RegionOne").glance.url == "http://one:9292"


def test_coordinator_file_without_the_sftp_account_loads(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["cascading"]["store"] = {"store_dir": "/var/lib/glance/images"}
    for region in data["regions"].values():
        del region["work_dir"]
    smap = storemap.load(write(tmp_path, data), storemap.Role.COORDINATOR)
    assert smap.store is not None and smap.store.private_key_file is None
    assert smap.source_path("img", "file:///var/lib/glance/images/img") == "/var/lib/glance/images/img"
    with pytest.raises(ConfigError, match="cascading.store.host is required"):
        storemap.load(write(tmp_path, data), storemap.Role.AGENT, "RegionOne")


def test_driver_file_with_regions_only_loads(tmp_path: Path) -> None:
    data = {"regions": {name: {"glance": entry["glance"]} for name, entry in GOOD["regions"].items()}}
    smap = storemap.load(write(tmp_path, data), storemap.Role.DRIVER)
    assert smap.store is None and smap.cascading_glance is None
    assert smap.region("RegionTwo").glance.url == "https://two:9292"
    with pytest.raises(ConfigError, match="cascading.store is required"):
        smap.source_path("img", "file:///var/lib/glance/images/img")


def test_agent_of_an_unknown_region_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        storemap.load(write(tmp_path, GOOD), storemap.Role.AGENT, "RegionNine")
    assert "RegionNine" in str(info.value) and "RegionOne, RegionTwo" in str(info.value)


def test_sftp_root_is_normalised(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["cascading"]["store"]["sftp_root"] = "/var/lib/glance/"
    smap = storemap.load(write(tmp_path, data), storemap.Role.AGENT, "RegionOne")
    assert smap.store is not None and smap.store.sftp_root == "/var/lib/glance"


def test_agent_role_needs_its_region_and_only_it_names_one() -> None:
    with pytest.raises(ValueError):
        storemap.parse(GOOD, "f.yaml", storemap.Role.AGENT)
    with pytest.raises(ValueError):
        storemap.parse(GOOD, "f.yaml", storemap.Role.COORDINATOR, "RegionOne")


PEER = {"host": "two.example.com", "port": 2022, "user": "peer", "path": "/cache/",
        "host_keys": ["ssh-ed25519 AAAAC3Nz comment"]}


def test_peer_entries_load_for_agent_and_coordinator_only(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["regions"]["RegionTwo"]["peer"] = PEER
    # The agent of RegionOne reads RegionTwo's peer: entry, never its glance (a file it may not have).
    data["regions"]["RegionTwo"]["glance_file"] = "/nonexistent/RegionTwo.yaml"
    del data["regions"]["RegionTwo"]["glance"]
    path = write(tmp_path, data)
    agent = storemap.load(path, storemap.Role.AGENT, "RegionOne")
    assert list(agent.regions) == ["RegionOne"]
    assert agent.peers["RegionTwo"] == storemap.PeerSource("RegionTwo", "two.example.com", 2022, "peer", "/cache",
                                                           ("ssh-ed25519 AAAAC3Nz",))
    assert storemap.parse(copy.deepcopy(GOOD) | {"regions": {**GOOD["regions"], "RegionTwo": {
        **GOOD["regions"]["RegionTwo"], "peer": PEER}}}).peers.keys() == {"RegionTwo"}
    assert storemap.load(write(tmp_path, GOOD)).peers == {}


@pytest.mark.parametrize(("key", "value"), [("host_keys", []), ("host_keys", ["nokeytype"]), ("path", "cache"),
                                            ("port", 0), ("user", None)])
def test_bad_peer_entry_names_the_key(tmp_path: Path, key: str, value: Any) -> None:
    data = copy.deepcopy(GOOD)
    data["regions"]["RegionTwo"]["peer"] = {**PEER, key: value}
    with pytest.raises(ConfigError, match=r"regions\.RegionTwo\.peer"):
        storemap.load(write(tmp_path, data), storemap.Role.AGENT, "RegionOne")
