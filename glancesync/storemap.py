"""``glance_store.yaml``: where the cascading store's bytes live and how to reach each region.

The file (see etc/glance_store.yaml.sample and doc/least-privilege.md)::

    cascading:
      glance: {url: ..., auth: {auth_type: password, ...}, headers: {...}}   # optional
      store:
        scheme: file                 # the only scheme served over SFTP today
        store_dir: /srv/glance-store/images
        host: glance.example.com     # host ... sftp_root: the agent's SFTP account
        port: 22
        user: glancesync
        private_key_file: /etc/glance-sync/id_ed25519
        known_hosts_file: /etc/glance-sync/known_hosts
        sftp_root: /srv/glance-store # sshd's ChrootDirectory for that account (optional)
    regions:
      RegionOne:
        glance_file: regions.d/RegionOne.yaml   # {glance: {url: ..., auth: ...}}
        work_dir: /var/lib/glance-sync/work
      RegionTwo:
        glance: {url: http://..., auth: {auth_type: none}, headers: {...}}   # inline
        source:                                  # optional: reading RegionTwo's snapshots
          glance_file: sources.d/RegionTwo.yaml  # or glance: {...}; a download account
          store: {store_dir: ..., host: ..., user: ..., ...}   # its file store over SFTP
        peer:                        # optional: this region serves its agent's cache_dir
          host: r2.example.com       # (doc/peers.md)
          port: 22
          user: glancesync-peer
          path: /cache               # cache_dir as the confined account sees it
          host_keys: ["ssh-ed25519 AAAA..."]   # pinned: the agents' known_hosts for it

Each host loads it for its :class:`Role` and reads only what that role uses, so a
host's file can leave out everything else: the agent reads its own region (no other
region's ``glance_file`` is ever opened), its ``work_dir``, the SFTP account, the
other regions' ``source`` (where a snapshot made there is read from, doc/snapshots.md)
and every region's ``peer:`` (no credential: an address and pinned host keys); the
coordinator reads every region's glance and ``peer:``, the cascading glance,
``store_dir`` and each ``source.store.store_dir``; the ``cascaded://`` driver reads
every region's glance and nothing of ``cascading``.

What is read is loaded into frozen dataclasses and checked completely on load:
every error names the file and the key, so a service refuses to start on a broken
file rather than failing a transfer an hour later.
"""

from __future__ import annotations

import enum
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


class Role(enum.Enum):
    """Which host loads glance_store.yaml; each reads only the keys it uses."""

    COORDINATOR = "coordinator"
    AGENT = "agent"
    DRIVER = "driver"


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
    # The loop-guard secret (glancesync.marker): set only for the coordinator's
    # cascading glance, never read from glance_store.yaml, never shown.
    internal_secret: bytes | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        # Credentials never reach a log line through a repr.
        shown = {k: ("***" if any(m in k.lower() for m in _SECRET_MARKS) else v) for k, v in self.auth.items()}
        return f"GlanceEndpoint(url={self.url!r}, auth={shown!r})"


@dataclass(frozen=True)
class SshStore:
    """The cascading glance's file store, reached over SFTP.

    Only the agent's load fills the account fields (host, port, user, key files,
    ``sftp_root``); for the coordinator they are None and ``store_dir`` is all it uses.
    """

    host: str | None
    port: int | None
    user: str | None
    private_key_file: str | None
    known_hosts_file: str | None
    store_dir: str
    scheme: str = "file"
    # The directory sshd chroots the account into (ChrootDirectory): the SFTP server
    # shows it as "/".  None: the account sees the host's own paths.
    sftp_root: str | None = None


@dataclass(frozen=True)
class Region:
    name: str
    glance: GlanceEndpoint
    work_dir: str | None = None  # loaded for the agent only


@dataclass(frozen=True)
class RegionSource:
    """Where other regions' agents read the bytes of a snapshot made in this region.

    ``store``: the region's glance file store over SFTP (for the coordinator only
    ``store_dir``); ``glance``: an account of the region's glance that may download
    (agents only).  Either may be missing.
    """

    glance: GlanceEndpoint | None = None
    store: SshStore | None = None


@dataclass(frozen=True)
class PeerSource:
    """A region's cache served over SFTP (its ``peer:`` entry): where, and the host keys it must show."""

    region: str
    host: str
    port: int
    user: str
    path: str  # the cache directory as the SFTP account sees it
    host_keys: tuple[str, ...]  # "ssh-ed25519 AAAA...": written into the agents' known_hosts


@dataclass(frozen=True)
class StoreMap:
    path: str
    store: SshStore | None  # None for the cascaded:// driver
    regions: Mapping[str, Region]
    cascading_glance: GlanceEndpoint | None = None
    # region -> how its snapshots are read (regions.<name>.source); the driver loads none.
    sources: Mapping[str, RegionSource] = field(default_factory=dict)
    # Regions that serve their agent's cache to other regions (not loaded for the driver).
    peers: Mapping[str, PeerSource] = field(default_factory=dict)

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
        if self.store is None:
            raise ConfigError(source=self.path, detail="cascading.store is required")
        return store_path(self.store, image_id, location_url)


def store_path(store: SshStore, image_id: str, location_url: str) -> str:
    """The path inside ``store.store_dir`` that a ``file://`` location names; SourceRefused otherwise."""
    try:
        parsed = urllib.parse.urlparse(location_url)
    except ValueError:  # "file://[x/..." (an invalid IPv6 host) and the like
        raise SourceRefused(image_id=image_id, detail=f"location {location_url!r} is not a URL") from None
    if parsed.scheme != store.scheme:
        raise SourceRefused(image_id=image_id, detail=f"location scheme {parsed.scheme!r} is not served over SFTP")
    raw_path = urllib.parse.unquote(parsed.path)
    if parsed.netloc not in ("", "localhost") or not raw_path.startswith("/") or "\x00" in raw_path:
        raise SourceRefused(image_id=image_id, detail=f"location {location_url!r} is not an absolute local path")
    path = posixpath.normpath(raw_path)
    root = posixpath.normpath(store.store_dir)
    if posixpath.commonpath([root, path]) != root or path == root:
        raise SourceRefused(image_id=image_id, detail=f"path {path!r} is outside the store directory {root!r}")
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


def _store(data: Any, path: str, sftp: bool, where: str = "cascading.store") -> SshStore:
    data = _mapping(data, where, path)
    scheme = data.get("scheme", "file")
    if scheme != "file":
        raise ConfigError(source=path, detail=f"{where}.scheme {scheme!r} is not supported (only file)")
    store_dir = _require(data, "store_dir", where, path)
    if not store_dir.startswith("/"):
        raise ConfigError(source=path, detail=f"{where}.store_dir must be an absolute path")
    if not sftp:
        return SshStore(None, None, None, None, None, store_dir=store_dir, scheme=scheme)
    port = data.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(source=path, detail=f"{where}.port must be a port number, not {port!r}")
    sftp_root = data.get("sftp_root")
    if sftp_root is not None:
        if not isinstance(sftp_root, str) or not sftp_root.startswith("/"):
            raise ConfigError(source=path, detail=f"{where}.sftp_root must be an absolute path, not {sftp_root!r}")
        sftp_root = posixpath.normpath(sftp_root)
        if posixpath.commonpath([sftp_root, posixpath.normpath(store_dir)]) != sftp_root:
            raise ConfigError(source=path, detail=f"{where}.store_dir must be inside sftp_root {sftp_root!r}")
    return SshStore(
        host=_require(data, "host", where, path),
        port=port,
        user=_require(data, "user", where, path),
        private_key_file=_require(data, "private_key_file", where, path),
        known_hosts_file=_require(data, "known_hosts_file", where, path),
        store_dir=store_dir,
        scheme=scheme,
        sftp_root=sftp_root,
    )


def _read_yaml(path: str, named_by: str = "") -> Any:
    """The parsed content of ``path``; ConfigError naming it (and who named it) otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(source=path, detail=f"cannot read: {exc.strerror}{named_by}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: not UTF-8
        raise ConfigError(source=path, detail=f"not valid YAML: {exc}{named_by}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(source=path, detail=f"not valid YAML: nested too deep{named_by}") from None


def _region_glance(data: Mapping[str, Any], where: str, path: str) -> GlanceEndpoint:
    """A region's endpoint: inline ``glance``, or the ``glance`` mapping of ``glance_file``."""
    glance_file = data.get("glance_file")
    if glance_file is None:
        return _endpoint(data.get("glance"), f"{where}.glance", path)
    if data.get("glance") is not None:
        raise ConfigError(source=path, detail=f"{where}: give glance or glance_file, not both")
    if not isinstance(glance_file, str) or not glance_file:
        raise ConfigError(source=path, detail=f"{where}.glance_file must be a file path")
    # Relative to the directory of the file that names it, like an include.
    own = os.path.normpath(os.path.join(os.path.dirname(path), glance_file))
    content = _mapping(_read_yaml(own, f" ({where}.glance_file in {path})"), "top level", own)
    return _endpoint(content.get("glance"), "glance", own)


def _regions(data: Any, path: str, role: Role, only: str | None) -> dict[str, Region]:
    regions_data = {str(name): entry for name, entry in _mapping(data, "regions", path).items()}
    if not regions_data:
        raise ConfigError(source=path, detail="regions must name at least one region")
    if only is not None:
        if only not in regions_data:
            known = ", ".join(sorted(regions_data))
            raise ConfigError(source=path, detail=f"unknown region {only!r} (known: {known})")
        # Other regions are never looked at: their files need not exist on this host.
        regions_data = {only: regions_data[only]}
    regions = {}
    for name, entry in regions_data.items():
        where = f"regions.{name}"
        entry = _mapping(entry, where, path)
        work_dir = _require(entry, "work_dir", where, path) if role is Role.AGENT else None
        regions[name] = Region(name=name, glance=_region_glance(entry, where, path), work_dir=work_dir)
    return regions


def _peer(name: str, data: Any, path: str) -> PeerSource:
    where = f"regions.{name}.peer"
    data = _mapping(data, where, path)
    port = data.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(source=path, detail=f"{where}.port must be a port number, not {port!r}")
    peer_path = _require(data, "path", where, path)
    if not peer_path.startswith("/"):
        raise ConfigError(source=path, detail=f"{where}.path must be an absolute path")
    keys = data.get("host_keys")
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys or not all(
            isinstance(k, str) and len(k.split()) >= 2 and "\n" not in k for k in keys):
        raise ConfigError(source=path, detail=f"{where}.host_keys must list the host's public keys, "
                          "each 'TYPE BASE64' as in its /etc/ssh/ssh_host_*_key.pub")
    return PeerSource(region=name, host=_require(data, "host", where, path), port=port,
                      user=_require(data, "user", where, path), path=posixpath.normpath(peer_path),
                      host_keys=tuple(" ".join(k.split()[:2]) for k in keys))


def _peers(data: Any, path: str) -> dict[str, PeerSource]:
    """Every region's ``peer:`` (inline only: no other file of a region is opened for it)."""
    regions = _mapping(data, "regions", path)
    return {str(name): _peer(str(name), entry["peer"], path) for name, entry in regions.items()
            if isinstance(entry, Mapping) and entry.get("peer") is not None}


def parse(data: Any, path: str = "<glance_store.yaml>", role: Role = Role.COORDINATOR,
          region: str | None = None) -> StoreMap:
    """Build the StoreMap ``role`` needs from parsed YAML, raising ConfigError naming the key.

    ``region`` (the agent's, required for Role.AGENT) limits the regions to that one.
    """
    if (role is Role.AGENT) != (region is not None):
        raise ValueError("a region is given for, and only for, Role.AGENT")
    data = _mapping(data, "top level", path)
    store = glance = None
    if role is not Role.DRIVER:
        cascading = _mapping(data.get("cascading"), "cascading", path)
        if "store" not in cascading:
            raise ConfigError(source=path, detail="cascading.store is required")
        store = _store(cascading["store"], path, sftp=role is Role.AGENT)
        if role is Role.COORDINATOR and cascading.get("glance") is not None:
            glance = _endpoint(cascading["glance"], "cascading.glance", path)
    regions = _regions(data.get("regions"), path, role, region)
    sources = {} if role is Role.DRIVER else _sources(data.get("regions"), path, role)
    peers = {} if role is Role.DRIVER else _peers(data.get("regions"), path)
    return StoreMap(path=path, store=store, regions=regions, cascading_glance=glance, sources=sources,
                    peers=peers)


def _sources(data: Any, path: str, role: Role) -> dict[str, RegionSource]:
    """Every region's ``source``: the agent loads its account(s), the coordinator only ``store_dir``."""
    sources = {}
    for name, entry in _mapping(data, "regions", path).items():
        where = f"regions.{name}.source"
        source = _mapping(_mapping(entry, f"regions.{name}", path).get("source"), where, path)
        if not source:
            continue
        glance = None
        if role is Role.AGENT and (source.get("glance") is not None or source.get("glance_file") is not None):
            glance = _region_glance(source, where, path)
        store = None
        if source.get("store") is not None:
            store = _store(source["store"], path, sftp=role is Role.AGENT, where=f"{where}.store")
        sources[str(name)] = RegionSource(glance=glance, store=store)
    return sources


def load(path: str, role: Role = Role.COORDINATOR, region: str | None = None) -> StoreMap:
    """Read and validate glance_store.yaml as ``role`` needs it (the agent: for ``region``)."""
    return parse(_read_yaml(path), os.path.abspath(path), role, region)
