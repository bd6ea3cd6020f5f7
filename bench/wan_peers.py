"""The WAN bench's peer mode: each region's cache served by a confined sshd in its namespace, and the project's modes.

doc/peers.md, as tests/harness/peers.py sets it up for the functional tests, moved
into the bench's namespaces: :class:`WanPeers` runs one sshd per region under
``ip netns exec <region>``, listening on the region's peer address
(bench/wan_net.py), its account chrooted into ``peers/<Region>/root`` with
``ForceCommand internal-sftp -R``; the region's agent keeps its cache in
``root/cache`` (the account's ``/cache``); the agents' store key is authorised; and
every region's ``peer:`` entry, with its pinned host key, goes into the coordinator's
and every agent's glance_store.yaml.  Other regions reach that sshd over their
region-to-region links only.

A round runs the project in each of its :class:`Mode` s, one after the other: with no
peers (today's star: every region fetches from the cascading store), with peers and
``[coordinator] max_source_fanout`` (the tree), and, when ``--coordinator-opt`` is
given, with peers and those options too (e.g. chained distribution once it exists).
Between two modes the coordinator and the agents are restarted with the mode's
glance-sync.conf and glance_store.yaml (outside the measured time).
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.wan_net import Plan
from coordinator.journal import unpack
from tests.harness.peers import PeerCaches
from tests.harness.sshd import SshServer

_OPT = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_]*)=([^\r\n]+)$")


def parse_conf_opt(text: str) -> tuple[str, str, str]:
    """``section.key=value`` (a glance-sync.conf option) as (section, key, value); ValueError if malformed."""
    match = _OPT.match(text)
    if match is None:
        raise ValueError(f"{text!r}: expected section.key=value (e.g. coordinator.max_source_fanout=2)")
    section, key, value = match.groups()
    return section, key, value


@dataclass(frozen=True)
class Mode:
    """One way of running the project: its result key, its label, with or without peers, its conf overrides."""

    key: str
    label: str
    peers: bool
    conf: dict[str, dict[str, Any]] = field(default_factory=dict)


def modes(fanout: int | None, extra: list[tuple[str, str, str]]) -> list[Mode]:
    """The project's modes in a round: no peers, then (unless ``fanout`` is None) peers, then peers + ``extra``."""
    out = [Mode("project", "project, no peers (star)", False)]
    if fanout is None:
        return out
    tree = {"coordinator": {"max_source_fanout": fanout}}
    out.append(Mode("peers", f"project, peers (fanout {fanout})", True, tree))
    if extra:
        conf = {section: dict(values) for section, values in tree.items()}
        for section, key, value in extra:
            conf.setdefault(section, {})[key] = value
        words = ", ".join(f"{s}.{k}={v}" for s, k, v in extra)
        out.append(Mode("peers_opts", f"project, peers + {words}", True, conf))
    return out


class NsSshServer(SshServer):
    """An sshd started inside namespace ``ns``, listening on ``addr``."""

    def __init__(self, base_dir: Path, ns: str, addr: str, **options: Any) -> None:
        super().__init__(base_dir, **options)
        self.ns, self.host = ns, addr

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *super().command()]


class WanPeers(PeerCaches):
    """One confined cache sshd per region, in the region's namespace; switches glance_store.yaml per mode."""

    def __init__(self, topology: Any, plan: Plan, cache_max_bytes: int) -> None:
        super().__init__(topology, cache_max_bytes)
        base = topology.base_dir / "peers"
        key = f"{topology.sshd.private_key_file}.pub"
        self.servers = {
            link.region: NsSshServer(base / link.region / "sshd", link.ns, link.peer_addr,
                                     chroot_dir=base / link.region / "root", also_authorized=key)
            for link in plan.links
        }
        self.texts: dict[bool, dict[Path, str]] = {}

    def _store_files(self) -> list[Path]:
        topo = self.topology
        return [topo.store_yaml, *(topo.agent_store_yaml(name) for name in topo.region_names)]

    def start(self, timeout: float = 60.0) -> WanPeers:
        """Start every region's cache sshd; keep glance_store.yaml's texts without and with ``peer:``."""
        self.texts[False] = {path: path.read_text() for path in self._store_files()}
        super().start(timeout)
        self.texts[True] = {path: path.read_text() for path in self._store_files()}
        return self

    def use(self, peers: bool) -> None:
        """glance_store.yaml (coordinator's and agents') with or without the ``peer:`` entries."""
        for path, text in self.texts[peers].items():
            path.write_text(text)

    def agent_options(self, region: str) -> dict[str, Any]:
        """The ``[agent]`` options that make ``region``'s agent keep the cache its sshd serves."""
        return {"cache_dir": self.cache_dir(region), "cache_max_bytes": self.cache_max_bytes}


def sources(journal: Path, image_id: str) -> Counter[str]:
    """How many synced copies of ``image_id`` each source served (``cascading`` or a region), from the journal."""
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT report FROM tasks WHERE image_id = ? AND kind = 'copy' AND state = 'synced'",
                          (image_id,)).fetchall()
    return Counter(str((unpack(report) or {}).get("fetched_from") or "?") for (report,) in rows)
