"""A whole cascaded deployment on 127.0.0.1: the thing end-to-end tests and the demo run.

:class:`Topology` owns, under one base directory:

- one cascading :class:`GlanceServer` (optionally with our paste filter and
  ``cascaded://`` store driver), N cascaded ones (``RegionA``, ``RegionB``, ...),
- one :class:`SshServer` serving the cascading glance's file store over SFTP,
- our own config files (``glance_store.yaml``, the oslo.config service file and
  the loop-guard secret ``etc/internal.secret`` that the coordinator and the
  cascading glance-api's filter share),
- the coordinator and agents it starts as real processes (``start_coordinator``,
  ``start_agent``).

``start()`` brings glances and sshd up in parallel; ``stop()`` tears everything
down, also after a partial start.  It is a context manager and has no pytest
dependency, so the demo script uses it as is::

    with Topology(Path("demo-run"), sync_filter=True, cascaded_store=True) as topo:
        topo.start_coordinator()
        for region in topo.region_names:
            topo.start_agent(region)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from glancesync import marker
from tests.harness.glance import IDENTITY_HEADERS, GlanceServer, venv_bin
from tests.harness.procs import LOOPBACK, ServiceError, ServiceProcess, free_port, tcp_open
from tests.harness.sshd import SshServer

# oslo DictOpt splits on commas, so a multi-role X-Roles cannot be written there.
SERVICE_IDENTITY_HEADERS = {**IDENTITY_HEADERS, "X-Roles": "admin"}


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


class Topology:
    """Cascading glance + cascaded glances + sshd (+ coordinator and agents on demand)."""

    def __init__(
        self,
        base_dir: str | Path,
        *,
        regions: int | Sequence[str] = 2,
        sync_filter: bool = False,
        cascaded_store: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.etc_dir = self.base_dir / "etc"
        self.log_dir = self.base_dir / "logs"
        self.region_names = region_names(regions) if isinstance(regions, int) else list(regions)
        self.client_port = free_port()  # coordinator: events + status (sync_server_port)
        self.agent_port = free_port()  # coordinator: agents
        self.store_yaml = self.etc_dir / "glance_store.yaml"
        self.service_conf = self.etc_dir / "glance-sync.conf"
        self.journal_path = self.base_dir / "coordinator" / "journal.sqlite"
        self.spool_dir = self.base_dir / "cascading" / "spool"
        self.internal_secret_file = self.etc_dir / "internal.secret"
        glance_dir = self.base_dir / "glance"
        self.cascading = GlanceServer(
            "cascading",
            glance_dir / "cascading",
            sync_filter=sync_filter,
            sync_server_port=self.client_port,
            spool_dir=self.spool_dir,
            cascaded_store=cascaded_store,
            store_config=self.store_yaml,
            internal_secret_file=self.internal_secret_file,
        )
        self.cascaded = {name: GlanceServer(name, glance_dir / name) for name in self.region_names}
        self.sshd = SshServer(self.base_dir / "sshd")
        self.services: list[ServiceProcess] = []
        self.start_seconds: float | None = None

    def __repr__(self) -> str:
        return f"<Topology {self.base_dir} cascading={self.cascading.url} regions={self.region_names}>"

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def glances(self) -> list[GlanceServer]:
        return [self.cascading, *self.cascaded.values()]

    def work_dir(self, region: str) -> Path:
        return self.base_dir / "regions" / region / "work"

    # -- our config files ---------------------------------------------------

    def store_map(self) -> dict[str, Any]:
        """The content of glance_store.yaml, as data."""

        def endpoint(server: GlanceServer) -> dict[str, Any]:
            return {"url": server.url, "auth": {"auth_type": "none"}, "headers": dict(IDENTITY_HEADERS)}

        return {
            "cascading": {
                "glance": endpoint(self.cascading),
                "store": {
                    "scheme": "file",
                    "host": self.sshd.host,
                    "port": self.sshd.port,
                    "user": self.sshd.user,
                    "private_key_file": str(self.sshd.private_key_file),
                    "known_hosts_file": str(self.sshd.known_hosts_file),
                    "store_dir": str(self.cascading.data_dir),
                },
            },
            "regions": {
                name: {"glance": endpoint(server), "work_dir": str(self.work_dir(name))}
                for name, server in self.cascaded.items()
            },
        }

    def write_store_yaml(self, path: str | Path | None = None) -> Path:
        """Write glance_store.yaml (default: etc/glance_store.yaml) and the regions' work dirs."""
        target = Path(path) if path else self.store_yaml
        target.parent.mkdir(parents=True, exist_ok=True)
        for name in self.region_names:
            self.work_dir(name).mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.store_map(), sort_keys=False))
        return target

    def write_internal_secret(self) -> Path:
        """The loop-guard secret shared by the coordinator and the filter (made once, mode 0600)."""
        if not self.internal_secret_file.exists():
            self.internal_secret_file.parent.mkdir(parents=True, exist_ok=True)
            marker.write_secret(str(self.internal_secret_file))
        return self.internal_secret_file

    def service_sections(self) -> dict[str, dict[str, Any]]:
        """The default content of glance-sync.conf, by section (names from glancesync/opts.py)."""
        headers = ",".join(f"{k}:{v}" for k, v in SERVICE_IDENTITY_HEADERS.items())
        return {
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
                "heartbeat_interval": 0.5,
                "lease_timeout": 5,
                "retry_backoff": 0.5,
                "reconcile_interval": 3,
            },
            "database": {"connection": f"sqlite:///{self.journal_path}"},
            "agent": {
                "coordinator_host": LOOPBACK,
                "coordinator_port": self.agent_port,
                "heartbeat_interval": 0.5,
                "workers": 2,
            },
            "cascading_glance": {"auth_type": "none", "identity_headers": headers},
            "proxy": {"spool_dir": self.base_dir / "proxy-spool"},
        }

    def write_service_conf(self, path: str | Path | None = None, **overrides: dict[str, Any]) -> Path:
        """Write glance-sync.conf; ``overrides`` are per section, e.g. ``coordinator={"lease_timeout": 2}``."""
        sections = self.service_sections()
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        return write_conf(Path(path) if path else self.service_conf, sections)

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Topology:
        """Write our configs, start every glance and sshd in parallel, wait for all."""
        started = time.monotonic()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.write_store_yaml()
        self.write_internal_secret()
        self.write_service_conf()
        starters: list[Callable[[], object]] = [lambda g=g: g.start(timeout) for g in self.glances]
        starters.append(lambda: self.sshd.start(timeout))
        with ThreadPoolExecutor(max_workers=len(starters)) as pool:
            futures = [pool.submit(fn) for fn in starters]
            errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            self.stop()
            detail = "\n\n".join(str(e) for e in failed)
            raise ServiceError(
                f"topology start failed ({len(failed)} of {len(starters)}):\n{detail}"
            ) from failed[0]
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop agents, coordinator, glances and sshd; safe after a partial start and twice."""
        self.stop_services()
        with ThreadPoolExecutor(max_workers=len(self.glances) + 1) as pool:
            list(pool.map(lambda s: s.stop(), [*self.glances, self.sshd]))

    # -- our services -----------------------------------------------------------

    def stop_services(self, *, remove_journal: bool = False) -> None:
        """Stop the agents and the coordinator started so far (newest first) and forget them."""
        for service in reversed(self.services):
            service.stop()
        self.services.clear()
        if remove_journal:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.journal_path}{suffix}").unlink(missing_ok=True)

    def run_manage(self, *args: str, conf: Path | None = None, timeout: float = 60.0) -> str:
        """Run ``glance-sync-manage --config-file <conf> <args>``; its output, or ServiceError."""
        argv = [venv_bin("glance-sync-manage"), "--config-file", str(conf or self.service_conf), *args]
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            tail = "\n".join(output.splitlines()[-30:])
            raise ServiceError(f"{' '.join(argv)} failed (exit {result.returncode}):\n{tail}")
        return output

    def coordinator_ready(self) -> bool:
        """True when both coordinator sockets accept TCP."""
        return tcp_open(LOOPBACK, self.agent_port) and tcp_open(LOOPBACK, self.client_port)

    def start_coordinator(self, conf: Path | None = None, timeout: float = 30.0) -> ServiceProcess:
        """db_sync the journal, start glance-sync-coordinator, wait for its two ports."""
        conf = conf or self.service_conf
        self.run_manage("db_sync", conf=conf)
        argv = [venv_bin("glance-sync-coordinator"), "--config-file", str(conf)]
        service = ServiceProcess("coordinator", argv, self.log_dir / "coordinator.log", cwd=self.base_dir)
        self.services.append(service)
        service.start()
        service.wait_ready(self.coordinator_ready, timeout)
        return service

    def start_agent(
        self,
        region: str,
        agent_id: str | None = None,
        *,
        conf: Path | None = None,
        ready: Callable[[], bool] | None = None,
        timeout: float = 30.0,
    ) -> ServiceProcess:
        """Start glance-sync-agent for ``region``; wait for ``ready`` when given."""
        if region not in self.cascaded:
            raise ValueError(f"unknown region {region!r} (known: {', '.join(self.region_names)})")
        agent_id = (
            agent_id
            or f"{region.lower()}-agent-{sum(s.name.startswith('agent ') for s in self.services) + 1}"
        )
        own = write_conf(
            self.etc_dir / f"agent-{agent_id}.conf", {"agent": {"region": region, "agent_id": agent_id}}
        )
        argv = [
            venv_bin("glance-sync-agent"),
            "--config-file",
            str(conf or self.service_conf),
            "--config-file",
            str(own),
        ]
        service = ServiceProcess(
            f"agent {agent_id}", argv, self.log_dir / f"agent-{agent_id}.log", cwd=self.base_dir
        )
        self.services.append(service)
        service.start()
        if ready is not None:
            service.wait_ready(ready, timeout)
        return service

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        """Poll ``predicate`` until true; on timeout, TimeoutError quoting our services' log tails."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                tails = "\n\n".join(f"--- {s.name} ({s.log_path}):\n{s.log_tail(15)}" for s in self.services)
                raise TimeoutError(f"{what} not reached after {timeout:.0f}s\n{tails}")
            time.sleep(0.1)
