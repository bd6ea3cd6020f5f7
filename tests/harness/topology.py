"""A whole cascaded deployment on 127.0.0.1, running: the thing end-to-end tests and the demo run.

:class:`Topology` is a :class:`~tests.harness.siteconfig.SiteConfig` (the servers and
every host's config files) that starts, stops and drives the processes under one
base directory: keystone (with ``keystone=True``), the glances and sshd, and the
coordinator and agents it starts on demand (``start_coordinator``, ``start_agent``).
With keystone our services log in with keystoneauth1 password auth, and
:meth:`Topology.client`, :meth:`Topology.openrc` and :meth:`Topology.cli_env` give a
test the same logins; without it (the default, what most tests use) clients send
forged identity headers.

``start()`` brings keystone, glances and sshd up in parallel; ``stop()`` tears everything
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.harness.glance import GlanceServer, venv_bin
from tests.harness.identity import openrc_env, write_private
from tests.harness.procs import LOOPBACK, ServiceError, ServiceProcess, tcp_open
from tests.harness.siteconfig import CASCADING_REGION, SiteConfig, store_config_of, write_conf


class Topology(SiteConfig):
    """Cascading glance + cascaded glances + sshd (+ keystone), running; coordinator and agents on demand."""

    def __init__(self, base_dir: str | Path, **options: Any) -> None:
        """``options``: those of :class:`SiteConfig` (regions, sync_filter, keystone...)."""
        super().__init__(base_dir, **options)
        self.log_dir = self.base_dir / "logs"
        self.services: list[ServiceProcess] = []
        self.start_seconds: float | None = None

    def __repr__(self) -> str:
        return f"<Topology {self.base_dir} cascading={self.cascading.url} regions={self.region_names}>"

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Topology:
        """Write our configs, start every glance and sshd in parallel, wait for all."""
        started = time.monotonic()
        self.write_all()
        starters: list[Callable[[], object]] = [lambda g=g: g.start(timeout) for g in self.glances]
        starters.append(lambda: self.sshd.start(timeout))
        if self.keystone is not None:
            # First in the pool: preparing its database is the longest step of all.
            starters.insert(0, self._start_keystone)
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
        """Stop agents, coordinator, glances, sshd and keystone; safe after a partial start and twice."""
        self.stop_services()
        servers: list[Any] = [*self.glances, self.sshd]
        if self.keystone is not None:
            servers.append(self.keystone)
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            list(pool.map(lambda s: s.stop(), servers))

    # -- keystone -----------------------------------------------------------------

    def _start_keystone(self) -> None:
        """Start keystone and register the catalog and every account (keystone topologies only)."""
        assert self.keystone is not None
        self.keystone.start()
        self.keystone.provision(self.catalog())

    def openrc(self, account: str = "admin") -> str:
        """An openrc file's text: ``admin`` (keystone's bootstrap admin) or an account of :func:`keystone_accounts`."""
        if self.keystone is None:
            raise ServiceError("openrc: this topology runs without keystone")
        user = self.keystone.admin if account == "admin" else self.accounts[account]
        return self.keystone.openrc(user, CASCADING_REGION)

    def write_openrc(self, path: str | Path, account: str = "admin") -> Path:
        """Write :meth:`openrc` to ``path``, mode 0600 (it holds a password)."""
        return write_private(Path(path), self.openrc(account))

    def client(self, server: GlanceServer, account: str = "admin") -> Any:
        """A glanceclient for ``server``: as ``account`` with a keystone token, or with forged admin headers."""
        if self.keystone is None:
            return server.client()
        from glanceclient import client as glance_client

        user = self.keystone.admin if account == "admin" else self.accounts[account]
        return glance_client.Client("2", session=self.keystone.session(user), endpoint_override=server.url)

    def cli_env(self, account: str = "admin") -> dict[str, str]:
        """The environment a sourced :meth:`openrc` gives, on top of ours (for the CLIs as subprocesses)."""
        return openrc_env(self.openrc(account))

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
        conf = conf or self.service_conf
        own_sections: dict[str, dict[str, Any]] = {"agent": {"region": region, "agent_id": agent_id}}
        if store_config_of(conf) in (None, str(self.store_yaml)):
            # The shared file names the coordinator's glance_store.yaml: this agent's host has its own.
            own_sections["DEFAULT"] = {"glance_store_config": self.agent_store_yaml(region)}
        own = write_conf(self.host_etc(f"agent-{region}") / f"agent-{agent_id}.conf", own_sections)
        argv = [
            venv_bin("glance-sync-agent"),
            "--config-file",
            str(conf),
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
