"""Regions that feed each other in the test topology: one confined SFTP server per region's cache.

For each region, :class:`PeerCaches` runs an :class:`SshServer` whose account is
confined as doc/peers.md tells an operator to (ChrootDirectory a root-owned
directory, ForceCommand ``internal-sftp -R``), chrooted into ``peers/<Region>/root``;
the agent of that region keeps its cache in ``root/cache`` (``[agent] cache_dir``),
which the account sees as ``/cache``.  The agents' key (the one they use for the
cascading store) is authorised on every region's server, and each server's host key
goes into every ``peer:`` entry of glance_store.yaml (coordinator and agents), from
which the agents build their known_hosts.  :class:`SlowLink` stands between an agent
and a cache server when a test must cut a transfer in its middle.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from tests.harness.procs import LOOPBACK
from tests.harness.sshd import SshServer
from tests.harness.topology import Topology, write_conf

CACHE_PATH = "/cache"  # what the confined account calls the cache directory


class PeerCaches:
    """A cache SFTP server per region, and the config that makes agents and coordinator use them."""

    def __init__(self, topology: Topology, cache_max_bytes: int = 1024 ** 3) -> None:
        self.topology = topology
        self.cache_max_bytes = cache_max_bytes
        base = topology.base_dir / "peers"
        self.servers = {
            name: SshServer(base / name / "sshd", chroot_dir=base / name / "root",
                            also_authorized=f"{topology.sshd.private_key_file}.pub")
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

    def route_through(self, agent_region: str, peer_region: str, port: int) -> None:
        """Make ``agent_region``'s agent reach ``peer_region``'s cache on ``port`` (a SlowLink) from its next start."""
        path = self.topology.agent_store_yaml(agent_region)
        data = yaml.safe_load(path.read_text())
        data["regions"][peer_region]["peer"]["port"] = port
        path.write_text(yaml.safe_dump(data, sort_keys=False))


class SlowLink:
    """A TCP relay on 127.0.0.1 to ``port``, replies held to ``rate`` bytes/s, that a test can cut.

    Put between an agent and a region's cache server (the agent's ``peer:`` entry
    names the relay's port; the host key stays the server's), it makes a transfer
    last long enough to be cut in the middle: ``cut()`` closes every connection
    and stops listening, as a link that dies.
    """

    def __init__(self, port: int, rate: int) -> None:
        self.port_to, self.rate = port, rate
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.cutting = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cutting.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection((LOOPBACK, self.port_to))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, 0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.rate), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, rate: int) -> None:
        piece = max(1024, rate // 20) if rate else 65536
        try:
            while not self.cutting.is_set() and (data := source.recv(piece)):
                sink.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cutting.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
