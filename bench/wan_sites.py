"""The WAN bench's sites: the test harness's topology with each region in its own network namespace.

:class:`WanTopology` is tests/harness/topology.py's :class:`Topology` with three
changes: each regional glance-api and agent runs under ``ip netns exec <region>``
and listens on its region's link address; sshd and the coordinator listen on the
cascading site's address (bench/wan_net.py), which the regions route to over
their links; and the cascading glance-api, the coordinator and this process stay
in the cascading namespace (the caller has entered it before building this).
It also runs the two baselines, ``scp`` pulls and the serial relay, over the
same links.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from bench.wan_net import Link, Plan
from tests.functional import helpers
from tests.harness.glance import GlanceServer, venv_bin
from tests.harness.procs import LOOPBACK, ServiceProcess, tcp_open
from tests.harness.topology import Topology, write_conf


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


class NsGlance(GlanceServer):
    """A glance-api started inside namespace ``ns``, listening on ``addr``."""

    def __init__(self, name: str, base_dir: Path, ns: str, addr: str) -> None:
        super().__init__(name, base_dir)
        self.ns, self.addr = ns, addr
        self.url = f"http://{addr}:{self.port}"

    def command(self) -> list[str]:
        here = f"{LOOPBACK}:{self.port}"
        return in_ns(self.ns, [f"{self.addr}:{self.port}" if word == here else word for word in super().command()])


class WanTopology(Topology):
    """Cascading site + one namespace per region, as :mod:`bench.wan_net` built them."""

    def __init__(self, base_dir: Path, plan: Plan) -> None:
        super().__init__(base_dir, regions=[link.region for link in plan.links], sync_filter=True,
                         cascaded_store=True)
        self.plan = plan
        self.links = {link.region: link for link in plan.links}
        glance_dir = self.base_dir / "glance"
        self.cascaded = {link.region: NsGlance(link.region, glance_dir / link.region, link.ns, link.region_addr)
                         for link in plan.links}
        self.sshd.host = plan.site_addr
        self.cascading.extra_sections["DEFAULT"] = {"sync_server_host": plan.site_addr}

    def service_sections(self) -> dict[str, dict[str, Any]]:
        sections = super().service_sections()
        sections["DEFAULT"]["sync_server_host"] = self.plan.site_addr
        sections["coordinator"]["bind_host"] = self.plan.site_addr
        sections["agent"]["coordinator_host"] = self.plan.site_addr
        return sections

    def coordinator_ready(self) -> bool:
        return tcp_open(self.plan.site_addr, self.agent_port) and tcp_open(self.plan.site_addr, self.client_port)

    def start_region_agent(self, link: Link, options: dict[str, Any] | None = None,
                           suffix: str = "1") -> ServiceProcess:
        """glance-sync-agent of ``link.region`` in its namespace (Topology.start_agent, under ip netns exec).

        ``options``: more ``[agent]`` options (the capped run's ``max_bandwidth``).
        """
        agent_id = f"{link.region.lower()}-agent-{suffix}"
        own = write_conf(self.host_etc(f"agent-{link.region}") / f"agent-{agent_id}.conf", {
            "DEFAULT": {"glance_store_config": self.agent_store_yaml(link.region)},
            "agent": {"region": link.region, "agent_id": agent_id, **(options or {})},
        })
        argv = in_ns(link.ns, [venv_bin("glance-sync-agent"), "--config-file", str(self.service_conf),
                               "--config-file", str(own)])
        service = ServiceProcess(f"agent {agent_id}", argv, self.log_dir / f"agent-{agent_id}.log",
                                 cwd=self.base_dir)
        self.services.append(service)
        return service.start()

    def stop_region_agents(self) -> None:
        """Stop every region's agent (SIGTERM: each says bye, nothing is left running)."""
        for service in self.services:
            if service.name.startswith("agent "):
                service.stop()

    def start_region_agents(self, options: dict[str, Any], suffix: str, timeout: float = 120.0,
                            per_region: dict[str, dict[str, Any]] | None = None) -> None:
        """A new agent per region with ``options`` (and ``per_region[region]``); wait until each is online."""
        agents = {self.start_region_agent(link, {**options, **(per_region or {}).get(link.region, {})},
                                          suffix).name.split(" ", 1)[1] for link in self.plan.links}
        self.wait_for(lambda: agents <= set().union(*helpers.online_agents(self).values()), timeout,
                      f"agents {', '.join(sorted(agents))} online")

    def restart_services(self, conf: dict[str, dict[str, Any]], per_region: dict[str, dict[str, Any]],
                         suffix: str, timeout: float = 120.0) -> None:
        """Stop coordinator and agents; start them again on glance-sync.conf with ``conf`` over the defaults
        and each region's agent with ``per_region[region]`` as more ``[agent]`` options."""
        self.stop_services()
        self.write_service_conf(**conf)
        self.start_coordinator()
        self.start_region_agents({}, suffix, timeout, per_region)

    def upload(self, size: int) -> tuple[str, helpers.Uploaded]:
        """A random image uploaded to the cascading glance (a local upload: no link carries it)."""
        uploaded = helpers.upload_random(self.cascading.client(), size, name="bench-wan")
        return uploaded.id, uploaded

    def wait_synced(self, image_id: str, uploaded: helpers.Uploaded, timeout: float) -> None:
        """Until every region is ``synced`` and its glance holds an image with the same checksum."""
        helpers.wait_states(self, image_id, "synced", timeout=timeout)
        for name, server in self.cascaded.items():
            found = [i for i in server.client().images.list() if i.get("checksum") == uploaded.md5]
            if not found:
                raise RuntimeError(f"{name}: synced, yet its glance has no image with md5 {uploaded.md5}")

    def store_file(self, image_id: str) -> str:
        """The store file of ``image_id`` as the SFTP account names it."""
        return self.sshd.sftp_path(self.cascading.data_dir / image_id)

    def scp_argv(self, link: Link, remote: str, dest: Path) -> list[str]:
        ssh = self.sshd
        return in_ns(link.ns, [
            "scp", "-q", "-F", "/dev/null", "-P", str(ssh.port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={ssh.known_hosts_file}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
            "-o", f"IdentityFile={ssh.private_key_file}", "-o", "IdentityAgent=none",
            f"{ssh.user}@{ssh.host}:{remote}", str(dest)])

    def scp_pulls(self, remote: str, timeout: float) -> None:
        """One ``scp`` per region, all at once, each from its own namespace; wait for all."""
        dests = {name: self.work_dir(name) / "scp.img" for name in self.region_names}
        procs = [subprocess.Popen(self.scp_argv(self.links[name], remote, dest),  # noqa: S603
                                  stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for name, dest in dests.items()]
        deadline = time.monotonic() + timeout
        try:
            for proc in procs:
                _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                if proc.returncode != 0:
                    raise RuntimeError(f"scp failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for dest in dests.values():
                dest.unlink(missing_ok=True)

    def serial_relay(self, image_id: str, local: Path) -> None:
        """Download from the cascading glance, then upload to each region's glance in turn."""
        with open(local, "wb") as out:
            for chunk in self.cascading.client().images.data(image_id):
                out.write(chunk)
        size = local.stat().st_size
        try:
            for server in self.cascaded.values():
                client = server.client()
                image = client.images.create(name="bench-wan-relay", disk_format="raw", container_format="bare")
                with open(local, "rb") as data:
                    client.images.upload(image["id"], data, image_size=size)
        finally:
            local.unlink(missing_ok=True)
