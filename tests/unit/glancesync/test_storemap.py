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
    assert smap.store.host == "store.example.com" and smap.store.port == 2222
    assert smap.store.store_dir == "/var/lib/glance/images"
    assert sorted(smap.regions) == ["RegionOne", "RegionTwo"]
    two = smap.region("RegionTwo")
    assert two.glance.url == "https://two:9292"
    assert two.glance.headers == {"X-Roles": "admin"}
    assert two.glance.verify == "/etc/ca.pem"
    assert two.glance.auth == {"auth_type": "none"}
    assert smap.cascading_glance is not None and smap.cascading_glance.auth["password"] == "hunter2"


def test_checked_in_sample_loads() -> None:
    smap = storemap.load(str(SAMPLE))
    assert smap.regions and smap.store.scheme == "file"


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
        (("cascading", "store", "known_hosts_file"), _DELETE, "cascading.store.known_hosts_file"),
        (("cascading", "store", "store_dir"), "relative/dir", "cascading.store.store_dir"),
        (("cascading", "store", "port"), True, "cascading.store.port"),
        (("cascading", "store", "port"), 70000, "cascading.store.port"),
        (("cascading", "store", "scheme"), "rbd", "cascading.store.scheme"),
        (("cascading", "store"), _DELETE, "cascading.store"),
        (("cascading", "glance", "url"), "ftp://x", "cascading.glance.url"),
        (("cascading", "glance", "auth"), "password", "cascading.glance.auth"),
        (("regions",), {}, "regions"),
        (("regions",), ["RegionOne"], "regions"),
        (("regions", "RegionOne", "work_dir"), _DELETE, "regions.RegionOne.work_dir"),
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
