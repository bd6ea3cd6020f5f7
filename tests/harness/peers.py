"""Regions that feed each other in the test topology: one confined SFTP server per region's cache.

For each region, :class:`PeerCaches` runs an :class:`SshServer` whose account is
confined as doc/peers.md tells an operator to (ChrootDirectory a root-owned
directory, ForceCommand ``internal-sftp -R``), chrooted into ``peers/<Region>/root``;
the agent of that region keeps its cache in ``root/cache`` (``[agent] cache_dir``),
which the account sees as ``/cache``.  The agents' key (the one they use for the
cascading store) is authorised on every region's server, and each server's host key
goes into every ``peer:`` entry of glance_store.yaml (coordinator and agents), from
which the agents build their known_hosts.  internal-sftp logs each file it serves
with the bytes read, so a test can tell which source served a copy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.harness.sshd import SshServer
from tests.harness.topology import Topology, write_conf

CACHE_PATH = "/cache"  # what the confined account calls the cache directory
# internal-sftp's line for a closed file: close "/cache/<id>" bytes read N written 0
_CLOSE = re.compile(r'close "([^"]+)" bytes read (\d+)')


def bytes_served(log: str, image_id: str) -> list[int]:
    """The bytes read per file close of ``image_id`` in an sshd log (internal-sftp -l INFO)."""
    return [int(n) for path, n in _CLOSE.findall(log) if path.endswith("/" + image_id)]


class PeerCaches:
    """A cache SFTP server per region, and the config that makes agents and coordinator use them."""

    def __init__(self, topology: Topology, cache_max_bytes: int = 1024 ** 3) -> None:
        self.topology = topology
        self.cache_max_bytes = cache_max_bytes
        base = topology.base_dir / "peers"
        self.servers = {
            name: SshServer(base / name / "sshd", chroot_dir=base / name / "root",
                            also_authorized=f"{topology.sshd.private_key_file}.pub", log_reads=True)
            for name in topology.region_names
        }

    def cache_dir(self, region: str) -> Path:
        return self.servers[region].chroot_dir / "cache"

    def start(self, timeout: float = 60.0) -> PeerCaches:
        """Start every server (after the topology's sshd: its client key must exist), add the peer entries."""
        for name, server in self.servers.items():
            server.start(timeout)
            self.cache_dir(name).mkdir(mode=0o755, exist_ok=True)
        self.write_peer_entries()
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def entry(self, region: str) -> dict[str, Any]:
        server = self.servers[region]
        return {"host": server.host, "port": server.port, "user": server.user, "path": CACHE_PATH,
                "host_keys": [server.host_public_key()]}

    def write_peer_entries(self) -> None:
        """Every region's ``peer:`` into the coordinator's and each agent's glance_store.yaml."""
        topo = self.topology
        for path in [topo.store_yaml, *(topo.agent_store_yaml(name) for name in topo.region_names)]:
            data = yaml.safe_load(path.read_text())
            for name in topo.region_names:
                data["regions"].setdefault(name, {})["peer"] = self.entry(name)
            path.write_text(yaml.safe_dump(data, sort_keys=False))

    def agent_conf(self, region: str, **agent: Any) -> Path:
        """A glance-sync.conf for ``region``'s agent host: the shared one plus its cache options."""
        sections = topo_sections = self.topology.service_sections()
        topo_sections["agent"].update(cache_dir=self.cache_dir(region), cache_max_bytes=self.cache_max_bytes,
                                      **agent)
        return write_conf(self.topology.host_etc(f"agent-{region}") / "glance-sync.conf", sections)

    def served(self, region: str, image_id: str) -> list[int]:
        return bytes_served(self.servers[region].log_path.read_text(errors="replace"), image_id)
