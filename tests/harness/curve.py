"""CurveZMQ keys for a :class:`Topology`, in the role layout the coordinator reads.

Every key pair is made by ``glance-sync-manage keygen`` as an operator would; with a
role, ``--role`` puts its public key in ``keys/allowed/<role>/[<region>/]NAME.key``.
``conf_for(name)`` writes the topology's service config plus that service's own
``[curve]`` section (the coordinator's with ``allowed_clients_dir``)::

    keys = CurveKeys(topo)
    keys.make("coordinator")
    keys.make("regiona-agent", "agent", "RegionA")
    keys.make("status", "status")
    topo.start_coordinator(keys.conf_for("coordinator"))
    topo.start_agent("RegionA", "regiona-agent", conf=keys.conf_for("regiona-agent"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness.topology import Topology, write_conf


class CurveKeys:
    """Key pairs under ``<base>/keys``, the allow-list under ``<base>/keys/allowed``."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.dir = topo.base_dir / "keys"
        self.allowed = self.dir / "allowed"

    def make(self, name: str, role: str | None = None, region: str | None = None) -> None:
        """``glance-sync-manage keygen``; with ``role`` the public key goes on the allow-list."""
        args = ["keygen", "--dir", str(self.dir), "--name", name]
        if role:
            args += ["--role", role, "--allowed-dir", str(self.allowed)]
        if region:
            args += ["--region", region]
        self.topo.run_manage(*args)

    def secret(self, name: str) -> Path:
        return self.dir / f"{name}.key_secret"

    def revoke(self, name: str) -> list[Path]:
        """Remove ``name``'s public key from the allow-list; the files removed."""
        gone = list(self.allowed.rglob(f"{name}.key"))
        for path in gone:
            path.unlink()
        return gone

    def conf_for(self, name: str, **curve: Any) -> Path:
        """The service config plus ``name``'s ``[curve]`` section (extra options in ``curve``)."""
        section: dict[str, Any] = {"enabled": True, "secret_key_file": self.secret(name),
                                   "server_public_key_file": self.dir / "coordinator.key"}
        if name == "coordinator":
            section["allowed_clients_dir"] = self.allowed
        section.update(curve)
        own = write_conf(self.topo.etc_dir / f"curve-{name}.section", {"curve": section})
        path = self.topo.etc_dir / f"curve-{name}.conf"
        path.write_text(self.topo.service_conf.read_text() + "\n" + own.read_text())
        return path
