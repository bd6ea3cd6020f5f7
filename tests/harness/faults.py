"""Faults for the fault campaign: a running deployment (:class:`Site`) and one injector per kind.

A :class:`Site` is a :class:`~tests.harness.topology.Topology` with our coordinator and
one agent per region running, each region's ``work_dir`` on its own small tmpfs (when
we are root, so that a full disk can be made without touching the host's), and the
campaign's handles on every process.  :meth:`Site.heal` brings everything back to the
healthy state between trials.

Each fault kind is a function ``(site, rng, trigger) -> Injected`` in :data:`INJECTORS`;
it does its harm and its repair before returning.  ``trigger`` says which images belong
to the running trial (the registration fault waits for one of them to be
``registering``).  A fault whose moment never came (no worker ran, nothing was
registering) comes back with ``missed`` set: it did no harm and is reported as such.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.harness.procs import ServiceProcess, child_pids, cmdline
from tests.harness.topology import Topology

# Size of each region's work_dir tmpfs: two workers' .part files of the largest image, and room.
WORK_DIR_TMPFS = "192m"
# How long a fault waits for its moment (a worker to exist, a task to be registering).
TRIGGER_TIMEOUT = 60.0
# The journal is polled this often for a registering task: the state lasts well under a second.
REGISTERING_POLL = 0.01


@dataclass
class Injected:
    """What one fault did: ``target`` is a service or region, ``detail`` the evidence line."""

    kind: str
    target: str
    detail: str
    injected_at: float = 0.0  # time.monotonic()
    healed_at: float = 0.0
    missed: bool = False


class Site:
    """A Topology with coordinator and agents running, driven by the campaign."""

    def __init__(self, base_dir: Path, regions: int = 2, heartbeat_interval: float | None = None) -> None:
        self.topo = Topology(base_dir, regions=regions, sync_filter=True, cascaded_store=True)
        self.coordinator: ServiceProcess | None = None
        self.agents: dict[str, ServiceProcess] = {}
        self.tmpfs: list[Path] = []
        # None: the harness's own timing, as every functional test runs with.
        self.overrides = {} if heartbeat_interval is None else {
            "coordinator": {"heartbeat_interval": heartbeat_interval},
            "agent": {"heartbeat_interval": heartbeat_interval},
        }
        sections = self.topo.service_sections()
        self.lease_timeout = float(sections["coordinator"]["lease_timeout"])

    def start(self) -> Site:
        self.topo.start()
        if self.overrides:
            self.topo.write_service_conf(**self.overrides)
        if os.geteuid() == 0:
            for region in self.topo.region_names:
                self._mount_tmpfs(self.topo.work_dir(region))
        self.coordinator = self.topo.start_coordinator()
        for region in self.topo.region_names:
            self.agents[region] = self.topo.start_agent(region, f"{region.lower()}-agent")
        return self

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.kill(signal.SIGCONT, group=False)
        self.topo.stop()
        for path in reversed(self.tmpfs):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        self.tmpfs.clear()

    def _mount_tmpfs(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={WORK_DIR_TMPFS},mode=0700", "tmpfs", str(path)],
            check=True, capture_output=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.tmpfs.append(path)

    @property
    def can_fill_disk(self) -> bool:
        return len(self.tmpfs) == len(self.topo.region_names)

    def filler(self, region: str) -> Path:
        return self.topo.work_dir(region) / "faults-filler"

    def heal(self) -> None:
        """Every service running (restarted if not), no agent stopped, no filler file left."""
        for region, agent in self.agents.items():
            agent.kill(signal.SIGCONT, group=False)
            self.filler(region).unlink(missing_ok=True)
            if not agent.running:
                agent.restart()
        for server in self.topo.glances:
            if server.process is None or not server.process.running:
                server.start()
        if self.topo.sshd.process is None or not self.topo.sshd.process.running:
            self.topo.sshd.start()
        if self.coordinator is not None and not self.coordinator.running:
            self.restart_coordinator()

    def restart_coordinator(self) -> None:
        assert self.coordinator is not None
        self.coordinator.restart()
        self.coordinator.wait_ready(self.topo.coordinator_ready, 60)

    def worker_pids(self, region: str) -> list[int]:
        """The agent's worker processes: the children of its fork server (worker_mode = pool), or
        its spawned children (worker_mode = spawn); never the server or the resource tracker."""
        agent = self.agents[region]
        if agent.pid is None:
            return []
        children = child_pids(agent.pid)
        workers = [pid for pid in children if "spawn_main" in cmdline(pid)]
        for server in (pid for pid in children if "multiprocessing.forkserver" in cmdline(pid)):
            workers += child_pids(server)
        return workers

    def registering(self, image_ids: set[str]) -> list[tuple[str, str]]:
        """(image, region) of the given images whose task is ``registering`` in the journal now."""
        if not image_ids or not self.topo.journal_path.exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{self.topo.journal_path}?mode=ro", uri=True, timeout=1)
            try:
                rows = conn.execute("SELECT image_id, region FROM tasks WHERE state = 'registering'").fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            return []
        return [(image, region) for image, region in rows if image in image_ids]


Trigger = Callable[[], set[str]]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_for(predicate: Callable[[], object], timeout: float, interval: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(interval)
    return None


def kill_coordinator(site: Site, rng: random.Random, trigger: Trigger) -> Injected:
    assert site.coordinator is not None
    pid = site.coordinator.pid
    site.coordinator.kill(signal.SIGKILL)
    fault = Injected("kill_coordinator", "coordinator", "", injected_at=time.monotonic())
    down = rng.uniform(0.2, 3.0)
    time.sleep(down)
    site.restart_coordinator()
    fault.detail = f"kill -9 coordinator pid {pid}, restarted after {down:.1f} s"
    fault.healed_at = time.monotonic()
    return fault


def kill_agent(site: Site, rng: random.Random, trigger: Trigger) -> Injected:
    region = rng.choice(site.topo.region_names)
    agent = site.agents[region]
    pid, workers = agent.pid, site.worker_pids(region)
    # Only the agent's own pid, as `kill -9 <pid>` would: its workers must die with it.
    agent.kill(signal.SIGKILL, group=False)
    fault = Injected("kill_agent", region, "", injected_at=time.monotonic())
    agent.wait(10)
    gone = _wait_for(lambda: not any(_alive(w) for w in workers), 5.0, 0.05)
    survivors = [w for w in workers if _alive(w)]
    down = rng.uniform(0.2, 3.0)
    time.sleep(down)
    agent.restart()
    fault.detail = (
        f"kill -9 agent {region} pid {pid} with {len(workers)} worker(s) running"
        + ("" if gone or not workers else f"; worker(s) {survivors} outlived it by 5 s")
        + f", restarted after {down:.1f} s"
    )
    fault.healed_at = time.monotonic()
    return fault


def kill_worker(site: Site, rng: random.Random, trigger: Trigger) -> Injected:
    region = rng.choice(site.topo.region_names)
    found = _wait_for(lambda: site.worker_pids(region), TRIGGER_TIMEOUT, 0.02)
    if not found:
        return Injected("kill_worker", region, f"no worker of agent {region} seen in {TRIGGER_TIMEOUT:.0f} s",
                        injected_at=time.monotonic(), healed_at=time.monotonic(), missed=True)
    assert isinstance(found, list)
    # Let the worker get some way into its transfer before it dies.
    time.sleep(rng.uniform(0.0, 1.5))
    victims = [pid for pid in found if _alive(pid)] or found
    pid = rng.choice(victims)
    try:
        os.kill(pid, signal.SIGKILL)
        detail = f"kill -9 worker pid {pid} of agent {region}"
    except ProcessLookupError:
        detail = f"worker pid {pid} of agent {region} had already ended"
    now = time.monotonic()
    return Injected("kill_worker", region, detail, injected_at=now, healed_at=now)


def stop_agent(site: Site, rng: random.Random, trigger: Trigger) -> Injected:
    region = rng.choice(site.topo.region_names)
    agent = site.agents[region]
    agent.kill(signal.SIGSTOP, group=False)
    fault = Injected("stop_agent", region, "", injected_at=time.monotonic())
    held = site.lease_timeout + rng.uniform(1.0, 4.0)
    time.sleep(held)
    agent.kill(signal.SIGCONT, group=False)
    fault.detail = f"SIGSTOP agent {region} pid {agent.pid} for {held:.1f} s (lease_timeout {site.lease_timeout:g} s)"
    fault.healed_at = time.monotonic()
    return fault


def restart_glance(site: Site, rng: random.Random, trigger: Trigger) -> Injected:
    region = rng.choice(site.topo.region_names)
    server = site.topo.cascaded[region]
    server.stop()
    fault = Injected("restart_glance", region, "", injected_at=time.monotonic())
    down = rng.uniform(0.5, 4.0)
    time.sleep(down)
    server.start()
    fault.healed_at = time.monotonic()
    fault.detail = f"glance-api {region} stopped, started after {down:.1f} s (answering after " \
                   f"{fault.healed_at - fault.injected_at:.1f} s)"
    return fault


def restart_sshd(site: Site, rng: random.Random, trigger: Trigger) -> Injected:
    site.topo.sshd.stop()
    fault = Injected("restart_sshd", "sshd", "", injected_at=time.monotonic())
    down = rng.uniform(0.5, 4.0)
    time.sleep(down)
    site.topo.sshd.start()
    fault.healed_at = time.monotonic()
    fault.detail = f"sshd stopped, started after {down:.1f} s"
    return fault


def fill_disk(path: Path) -> int:
    """Fill the filesystem holding ``path`` with the file ``path``; the bytes written."""
    written, block = 0, 1024 * 1024
    zeros = b"\0" * block
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                written += os.write(fd, zeros[:block])
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if block == 4096:
                    return written
                block = max(4096, block // 16)
    finally:
        os.close(fd)


def disk_full(site: Site, rng: random.Random, trigger: Trigger) -> Injected:
    region = rng.choice(site.topo.region_names)
    filler = site.filler(region)
    written = fill_disk(filler)
    fault = Injected("disk_full", region, "", injected_at=time.monotonic())
    held = rng.uniform(2.0, 6.0)
    time.sleep(held)
    filler.unlink()
    fault.healed_at = time.monotonic()
    fault.detail = f"work_dir of {region} full ({written // 1024} KiB filler) for {held:.1f} s"
    return fault


def kill_registering(site: Site, rng: random.Random, trigger: Trigger) -> Injected:
    found = _wait_for(lambda: site.registering(trigger()), TRIGGER_TIMEOUT, REGISTERING_POLL)
    if not found:
        now = time.monotonic()
        return Injected("kill_registering", "coordinator", f"no task seen registering in {TRIGGER_TIMEOUT:.0f} s",
                        injected_at=now, healed_at=now, missed=True)
    assert site.coordinator is not None and isinstance(found, list)
    pid = site.coordinator.pid
    site.coordinator.kill(signal.SIGKILL)
    fault = Injected("kill_registering", "coordinator", "", injected_at=time.monotonic())
    site.restart_coordinator()
    fault.healed_at = time.monotonic()
    image, region = found[0]
    fault.detail = f"kill -9 coordinator pid {pid} while {image} was registering in {region}, restarted"
    return fault


INJECTORS: dict[str, Callable[[Site, random.Random, Trigger], Injected]] = {
    "kill_coordinator": kill_coordinator,
    "kill_agent": kill_agent,
    "kill_worker": kill_worker,
    "stop_agent": stop_agent,
    "restart_glance": restart_glance,
    "restart_sshd": restart_sshd,
    "disk_full": disk_full,
    "kill_registering": kill_registering,
}
# Faults that wait for their own moment; the others strike after a random delay.
TRIGGERED = frozenset({"kill_worker", "kill_registering"})
