"""``glance_store.yaml``: where the cascading store's bytes live and how to reach each region.

The file (see etc/glance_store.yaml.sample)::

    cascading:
      glance: {url: ..., auth: {auth_type: password, ...}, headers: {...}}   # optional
      store:
        scheme: file                 # the only scheme served over SFTP today
        host: glance.example.com
        port: 22
        user: glancesync
        private_key_file: /etc/glance-sync/id_ed25519
        known_hosts_file: /etc/glance-sync/known_hosts
        store_dir: /var/lib/glance/images
    regions:
      RegionOne:
        glance: {url: http://..., auth: {auth_type: none}, headers: {...}}
        work_dir: /var/lib/glance-sync/work

It is loaded into frozen dataclasses and checked completely on load: every error
names the file and the key, so a service refuses to start on a broken file rather
than failing a transfer an hour later.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from glancesync.exceptions import ConfigError, SourceRefused

DEFAULT_HTTP_TIMEOUT = 120.0
# An auth option whose name contains one of these never reaches a log line.
_SECRET_MARKS = ("password", "secret", "token", "passcode", "totp", "key")


@dataclass(frozen=True)
class GlanceEndpoint:
    """How to reach one glance-api: URL, keystoneauth1 auth options, extra headers."""

    url: str | None
    auth: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: bool | str = True
    region_name: str | None = None
    interface: str = "public"
    # Seconds a connection or a read may hang: a hung glance must not hold a worker
    # thread or a user's request forever. Long enough for glance to finish an upload.
    timeout: float = DEFAULT_HTTP_TIMEOUT

    def __repr__(self) -> str:
        # Credentials never reach a log line through a repr.
        shown = {k: ("***" if any(m in k.lower() for m in _SECRET_MARKS) else v) for k, v in self.auth.items()}
        return f"GlanceEndpoint(url={self.url!r}, auth={shown!r})"


@dataclass(frozen=True)
class SshStore:
    """The cascading glance's file store, reached over SFTP."""

    host: str
    port: int
    user: str
    private_key_file: str
    known_hosts_file: str
    store_dir: str
    scheme: str = "file"


@dataclass(frozen=True)
class Region:
    name: str
    glance: GlanceEndpoint
    work_dir: str


@dataclass(frozen=True)
class StoreMap:
    path: str
    store: SshStore
    regions: Mapping[str, Region]
    cascading_glance: GlanceEndpoint | None = None

    def region(self, name: str) -> Region:
        try:
            return self.regions[name]
        except KeyError:
            known = ", ".join(sorted(self.regions)) or "none"
            raise ConfigError(source=self.path, detail=f"unknown region {name!r} (known: {known})") from None

    def source_path(self, image_id: str, location_url: str) -> str:
        """The path inside the store directory that a ``file://`` location names.

        Anything outside ``store_dir`` (``..``, symlink-free absolute escapes, other
        schemes) is refused: a location is data from glance, not a path we trust.
        """
        try:
            parsed = urllib.parse.urlparse(location_url)
        except ValueError:  # "file://[x/..." (an invalid IPv6 host) and the like
            raise SourceRefused(image_id=image_id, detail=f"location {location_url!r} is not a URL") from None
        if parsed.scheme != self.store.scheme:
            raise SourceRefused(image_id=image_id, detail=f"location scheme {parsed.scheme!r} is not served over SFTP")
        raw_path = urllib.parse.unquote(parsed.path)
        if parsed.netloc not in ("", "localhost") or not raw_path.startswith("/") or "\x00" in raw_path:
            raise SourceRefused(image_id=image_id, detail=f"location {location_url!r} is not an absolute local path")
        path = posixpath.normpath(raw_path)
        root = posixpath.normpath(self.store.store_dir)
        if posixpath.commonpath([root, path]) != root or path == root:
            raise SourceRefused(
                image_id=image_id, detail=f"path {path!r} is outside the store directory {root!r}"
            )
        return path


def _require(data: Mapping[str, Any], key: str, where: str, path: str, kind: type | tuple = str) -> Any:
    if not isinstance(data, Mapping) or key not in data or data[key] in (None, ""):
        raise ConfigError(source=path, detail=f"{where}.{key} is required")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(source=path, detail=f"{where}.{key} must be {name}, not {type(value).__name__}")
    return value


def _mapping(data: Any, where: str, path: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(source=path, detail=f"{where} must be a mapping, not {type(data).__name__}")
    return data


def _endpoint(data: Any, where: str, path: str) -> GlanceEndpoint:
    data = _mapping(data, where, path)
    auth = dict(_mapping(data.get("auth"), f"{where}.auth", path))
    auth.setdefault("auth_type", "none")
    url = data.get("url")
    if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        raise ConfigError(source=path, detail=f"{where}.url must be an http(s) URL, not {url!r}")
    if url is None and auth["auth_type"] == "none":
        raise ConfigError(source=path, detail=f"{where}.url is required when auth_type is none")
    headers = {str(k): str(v) for k, v in _mapping(data.get("headers"), f"{where}.headers", path).items()}
    verify = data.get("verify", True)
    if not isinstance(verify, (bool, str)):
        raise ConfigError(source=path, detail=f"{where}.verify must be true, false or a CA bundle path")
    timeout = data.get("timeout", DEFAULT_HTTP_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise ConfigError(source=path, detail=f"{where}.timeout must be a positive number of seconds")
    return GlanceEndpoint(
        url=url,
        auth=auth,
        headers=headers,
        verify=verify,
        region_name=data.get("region_name"),
        interface=data.get("interface", "public"),
        timeout=float(timeout),
    )


def _store(data: Any, path: str) -> SshStore:
    where = "cascading.store"
    data = _mapping(data, where, path)
    scheme = data.get("scheme", "file")
    if scheme != "file":
        raise ConfigError(source=path, detail=f"{where}.scheme {scheme!r} is not supported (only file)")
    store_dir = _require(data, "store_dir", where, path)
    if not store_dir.startswith("/"):
        raise ConfigError(source=path, detail=f"{where}.store_dir must be an absolute path")
    port = data.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(source=path, detail=f"{where}.port must be a port number, not {port!r}")
    return SshStore(
        host=_require(data, "host", where, path),
        port=port,
        user=_require(data, "user", where, path),
        private_key_file=_require(data, "private_key_file", where, path),
        known_hosts_file=_require(data, "known_hosts_file", where, path),
        store_dir=store_dir,
        scheme=scheme,
    )


def parse(data: Any, path: str = "<glance_store.yaml>") -> StoreMap:
    """Build a StoreMap from parsed YAML, raising ConfigError naming the key."""
    data = _mapping(data, "top level", path)
    cascading = _mapping(data.get("cascading"), "cascading", path)
    if "store" not in cascading:
        raise ConfigError(source=path, detail="cascading.store is required")
    regions_data = _mapping(data.get("regions"), "regions", path)
    if not regions_data:
        raise ConfigError(source=path, detail="regions must name at least one region")
    regions = {}
    for name, region in regions_data.items():
        where = f"regions.{name}"
        region = _mapping(region, where, path)
        work_dir = _require(region, "work_dir", where, path)
        regions[str(name)] = Region(
            name=str(name), glance=_endpoint(region.get("glance"), f"{where}.glance", path), work_dir=work_dir
        )
    glance = cascading.get("glance")
    return StoreMap(
        path=path,
        store=_store(cascading["store"], path),
        regions=regions,
        cascading_glance=_endpoint(glance, "cascading.glance", path) if glance is not None else None,
    )


def load(path: str) -> StoreMap:
    """Read and validate glance_store.yaml."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(source=path, detail=f"cannot read: {exc.strerror}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: not UTF-8
        raise ConfigError(source=path, detail=f"not valid YAML: {exc}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(source=path, detail="not valid YAML: nested too deep") from None
    return parse(data, os.path.abspath(path))
