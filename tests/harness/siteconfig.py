"""Every host's configuration of a cascaded deployment on 127.0.0.1, before anything runs.

:class:`SiteConfig` builds the servers of one deployment (not started) and writes
our config files, per host as a deployment has them (doc/least-privilege.md):

- one cascading :class:`GlanceServer` (optionally with our paste filter and
  ``cascaded://`` store driver), N cascaded ones (``RegionA``, ``RegionB``, ...),
- one :class:`SshServer` serving the cascading glance's file store over SFTP to a
  confined account (chrooted into the store, read-only, no shell) when run as root,
- ``etc/coordinator/``, ``etc/glance-api/`` (the ``cascaded://`` driver's) and
  ``etc/agent-<Region>/``, each a ``glance_store.yaml`` with only what that host
  needs and a ``regions.d/<Region>.yaml`` per region it may reach; plus the
  oslo.config service file and the loop-guard secret ``etc/internal.secret`` that
  the coordinator and the cascading glance-api's filter share.  The coordinator's
  journal is SQLite in ``journal_path`` unless ``journal_url`` names another
  ``[database] connection`` (tests/harness/sqlserver.py).

With ``keystone=True`` it also holds a keystone (tests/harness/keystone.py), its
catalog (the cascading site as region ``Cascading`` and every region, each with its
glance as public ``image`` endpoint) and one account per service
(:func:`keystone_accounts`, doc/keystone.md).  Every glance-api is then configured
behind keystonemiddleware, each host's ``glance_store.yaml`` carries its own service
user, glance-sync.conf's ``[cascading_glance]`` the coordinator's, which finds the
cascading glance in the catalog.  Without it glances trust forged identity headers,
see tests/harness/glance.py.

Starting and driving the processes is tests/harness/topology.py's :class:`Topology`.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from glancesync import marker
from tests.harness.glance import IDENTITY_HEADERS, POLICY_FILE, GlanceServer
from tests.harness.identity import Catalog, keystone_accounts, region_policy
from tests.harness.keystone import KeystoneServer
from tests.harness.procs import LOOPBACK, free_port
from tests.harness.sshd import SshServer

# oslo DictOpt splits on commas, so a multi-role X-Roles cannot be written there.
SERVICE_IDENTITY_HEADERS = {**IDENTITY_HEADERS, "X-Roles": "admin"}
# The keystone region of the cascading site (its glance's catalog entry).
CASCADING_REGION = "Cascading"


def region_names(count: int) -> list[str]:
    """RegionA, RegionB, ... (``count`` of them)."""
    if not 0 <= count <= 26:
        raise ValueError("between 0 and 26 regions")
    return [f"Region{chr(ord('A') + i)}" for i in range(count)]


def write_conf(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write an ini file; booleans as True/False, lists comma-joined."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            lines.append(f"{key} = {value}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def store_config_of(conf: Path) -> str | None:
    """``[DEFAULT] glance_store_config`` of an ini file we wrote, or None."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(conf)
    return parser.defaults().get("glance_store_config")


class SiteConfig:
    """Cascading glance + cascaded glances + sshd (+ keystone), and our config files for each host."""

    def __init__(
        self,
        base_dir: str | Path,
        *,
        regions: int | Sequence[str] = 2,
        sync_filter: bool = False,
        cascaded_store: bool = False,
        keystone: bool = False,
        journal_url: str | None = None,
        snapshot_sources: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        # Each agent's glance_store.yaml also names every other region's ``source`` (its
        # glance, to download a snapshot made there; doc/snapshots.md).
        self.snapshot_sources = snapshot_sources
        self.etc_dir = self.base_dir / "etc"
        self.region_names = region_names(regions) if isinstance(regions, int) else list(regions)
        self.client_port = free_port()  # coordinator: events + status (sync_server_port)
        self.agent_port = free_port()  # coordinator: agents
        # glance_store.yaml per host; store_yaml is the coordinator's.
        self.store_yaml = self.host_etc("coordinator") / "glance_store.yaml"
        self.driver_store_yaml = self.host_etc("glance-api") / "glance_store.yaml"
        self.service_conf = self.etc_dir / "glance-sync.conf"
        self.journal_path = self.base_dir / "coordinator" / "journal.sqlite"
        # [database] connection of the coordinator: SQLite in journal_path, or a server's database.
        self.journal_url = journal_url or f"sqlite:///{self.journal_path}"
        self.spool_dir = self.base_dir / "cascading" / "spool"
        self.internal_secret_file = self.etc_dir / "internal.secret"
        glance_dir = self.base_dir / "glance"
        self.keystone = KeystoneServer(self.base_dir / "keystone") if keystone else None
        self.accounts = keystone_accounts(self.region_names) if keystone else {}
        authtoken = self._authtoken()
        self.cascading = GlanceServer(
            "cascading",
            glance_dir / "cascading",
            sync_filter=sync_filter,
            sync_server_port=self.client_port,
            spool_dir=self.spool_dir,
            cascaded_store=cascaded_store,
            store_config=self.driver_store_yaml,
            policy_file=POLICY_FILE,  # location writes: admin and service only, as deployed
            internal_secret_file=self.internal_secret_file,
            keystone_authtoken=authtoken,
        )
        self.cascaded = {
            name: GlanceServer(name, glance_dir / name, keystone_authtoken=authtoken,
                               policy_file=self.region_policy_file(name) if keystone else None)
            for name in self.region_names
        }
        # sshd can chroot the account only when it runs as root.
        confine = os.geteuid() == 0
        self.sshd = SshServer(self.base_dir / "sshd", chroot_dir=self.cascading.data_dir if confine else None)

    @property
    def glances(self) -> list[GlanceServer]:
        return [self.cascading, *self.cascaded.values()]

    def work_dir(self, region: str) -> Path:
        return self.base_dir / "regions" / region / "work"

    # -- our config files ---------------------------------------------------

    def host_etc(self, host: str) -> Path:
        """The config directory of one host: ``coordinator``, ``glance-api`` or ``agent-<Region>``."""
        return self.etc_dir / host

    def agent_store_yaml(self, region: str) -> Path:
        """The glance_store.yaml of ``region``'s agent host."""
        return self.host_etc(f"agent-{region}") / "glance_store.yaml"

    def region_policy_file(self, region: str) -> Path:
        """Where the policy file of ``region``'s glance is written before it starts (keystone only)."""
        return self.host_etc(f"glance-{region}") / "glance-policy.yaml"

    def _authtoken(self) -> dict[str, str] | None:
        """keystonemiddleware's options for every glance-api (glance's own service user)."""
        if self.keystone is None:
            return None
        glance = self.accounts["glance"]
        return {"www_authenticate_uri": self.keystone.url, **glance.auth(self.keystone.auth_url)}

    def _endpoint(self, server: GlanceServer, account: str = "coordinator") -> dict[str, Any]:
        """A glance_store.yaml ``glance:`` entry: forged admin headers, or ``account``'s keystone login."""
        if self.keystone is None:
            return {"url": server.url, "auth": {"auth_type": "none"}, "headers": dict(IDENTITY_HEADERS)}
        return {"url": server.url, "auth": self.accounts[account].auth(self.keystone.auth_url)}

    def _sftp_account(self) -> dict[str, Any]:
        """cascading.store as the agents need it: the store directory and the SFTP account."""
        return self.sftp_account(self.sshd, self.cascading.data_dir)

    @staticmethod
    def sftp_account(sshd: SshServer, store_dir: str | Path) -> dict[str, Any]:
        """A glance_store.yaml ``store`` entry for ``store_dir`` served by ``sshd`` (a region's too)."""
        store = {
            "scheme": "file",
            "store_dir": str(store_dir),
            "host": sshd.host,
            "port": sshd.port,
            "user": sshd.user,
            "private_key_file": str(sshd.private_key_file),
            "known_hosts_file": str(sshd.known_hosts_file),
        }
        if sshd.chroot_dir is not None:
            store["sftp_root"] = str(sshd.chroot_dir)
        return store

    def store_map(self) -> dict[str, Any]:
        """A one-host glance_store.yaml, as data: everything inline, loadable by every role."""
        return {
            "cascading": {"glance": self._endpoint(self.cascading), "store": self._sftp_account()},
            "regions": {
                name: {"glance": self._endpoint(server), "work_dir": str(self.work_dir(name))}
                for name, server in self.cascaded.items()
            },
        }

    def host_files(self) -> dict[Path, dict[str, Any]]:
        """Every host's glance_store.yaml and regions.d files, as data, by path.

        The coordinator: the cascading glance, store_dir and every region's glance; the
        glance-api host (cascaded:// driver): every region's glance only; each agent: the
        SFTP account and its own region.  Without keystone every region file carries
        the same identity headers; with it each host's files carry its own service
        user (coordinator, driver, agent-<Region>).
        """
        def region_file(name: str) -> str:
            return f"regions.d/{name}.yaml"

        files: dict[Path, dict[str, Any]] = {}
        for host, account in (("coordinator", "coordinator"), ("glance-api", "driver")):
            for name, server in self.cascaded.items():
                files[self.host_etc(host) / region_file(name)] = {"glance": self._endpoint(server, account)}
        files[self.store_yaml] = {
            "cascading": {"glance": self._endpoint(self.cascading),
                          "store": {"scheme": "file", "store_dir": str(self.cascading.data_dir)}},
            "regions": {name: {"glance_file": region_file(name)} for name in self.region_names},
        }
        files[self.driver_store_yaml] = {"regions": {name: {"glance_file": region_file(name)}
                                                     for name in self.region_names}}
        for name, server in self.cascaded.items():
            agent = self.agent_store_yaml(name)
            files[agent.parent / region_file(name)] = {"glance": self._endpoint(server, f"agent-{name}")}
            regions: dict[str, Any] = {name: {"glance_file": region_file(name), "work_dir": str(self.work_dir(name))}}
            if self.snapshot_sources:
                regions.update({other: {"source": {"glance": self._endpoint(self.cascaded[other], f"agent-{name}")}}
                                for other in self.region_names if other != name})
            files[agent] = {"cascading": {"store": self._sftp_account()}, "regions": regions}
        return files

    def write_store_files(self) -> list[Path]:
        """Write every host's files (directories 0750, files 0640) and the regions' work dirs."""
        for name in self.region_names:
            self.work_dir(name).mkdir(parents=True, exist_ok=True)
        written = []
        for path, data in self.host_files().items():
            directory = self.etc_dir
            directory.mkdir(parents=True, exist_ok=True)
            for part in path.parent.relative_to(self.etc_dir).parts:
                directory = directory / part
                directory.mkdir(mode=0o750, exist_ok=True)
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            path.chmod(0o640)
            written.append(path)
        return written

    def write_internal_secret(self) -> Path:
        """The loop-guard secret shared by the coordinator and the filter (made once, mode 0600)."""
        if not self.internal_secret_file.exists():
            self.internal_secret_file.parent.mkdir(parents=True, exist_ok=True)
            marker.write_secret(str(self.internal_secret_file))
        return self.internal_secret_file

    def service_sections(self) -> dict[str, dict[str, Any]]:
        """The default content of glance-sync.conf, by section (names from glancesync/opts.py)."""
        headers = ",".join(f"{k}:{v}" for k, v in SERVICE_IDENTITY_HEADERS.items())
        sections: dict[str, dict[str, Any]] = {
            "DEFAULT": {
                "debug": True,
                "sync_server_host": LOOPBACK,
                "sync_server_port": self.client_port,
                "glance_store_config": self.store_yaml,
                "cascading_endpoint_url": self.cascading.url,
                "snapshot_sleep_interval": 1,
                "sync_internal_secret_file": self.internal_secret_file,
            },
            "coordinator": {
                "bind_host": LOOPBACK,
                "agent_port": self.agent_port,
                # Liveness is three intervals: 3 s rides out the stalls of a busy 2-core CI
                # machine (at 0.5 s agents were taken for dead and their work requeued),
                # while a lapsed lease still shows within seconds.
                "heartbeat_interval": 1.0,
                "lease_timeout": 5,
                "retry_backoff": 0.5,
                "reconcile_interval": 3,
            },
            "database": {"connection": self.journal_url},
            "agent": {
                "coordinator_host": LOOPBACK,
                "coordinator_port": self.agent_port,
                "heartbeat_interval": 1.0,
                "workers": 2,
            },
            "cascading_glance": {"auth_type": "none", "identity_headers": headers},
            "proxy": {"spool_dir": self.base_dir / "proxy-spool"},
        }
        if self.keystone is not None:
            # The coordinator's own login; the cascading glance's URL comes from the catalog.
            del sections["DEFAULT"]["cascading_endpoint_url"]
            sections["cascading_glance"] = {
                **self.accounts["coordinator"].auth(self.keystone.auth_url),
                "region_name": CASCADING_REGION,
                "interface": "public",
            }
        return sections

    def write_service_conf(self, path: str | Path | None = None, **overrides: dict[str, Any]) -> Path:
        """Write glance-sync.conf; ``overrides`` are per section, e.g. ``coordinator={"lease_timeout": 2}``."""
        sections = self.service_sections()
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        written = write_conf(Path(path) if path else self.service_conf, sections)
        if self.keystone is not None:
            written.chmod(0o640)  # [cascading_glance] holds the coordinator's password
        return written

    def write_region_policies(self) -> None:
        """Each region's glance policy file (keystone only: its agent's role is admin there alone)."""
        if self.keystone is None:
            return
        for name in self.region_names:
            path = self.region_policy_file(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(region_policy(name))

    def write_all(self) -> None:
        """Every config file of every host, before any process starts."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.write_store_files()
        self.write_internal_secret()
        self.write_service_conf()
        self.write_region_policies()

    def catalog(self) -> Catalog:
        """What keystone holds: every glance as its region's ``image`` endpoint, and every account."""
        image_endpoints = {CASCADING_REGION: self.cascading.url}
        image_endpoints.update({name: server.url for name, server in self.cascaded.items()})
        return Catalog(image_endpoints, list(self.accounts.values()))
