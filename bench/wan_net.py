"""The WAN bench's network: one namespace per site, veth links with a rate limit, loopback-range addresses.

:func:`plan` is the address plan (pure): the cascading site has a site address
``127.<octet>.0.1/32`` on its loopback device, where the services the regions reach
listen (sshd, the coordinator); link ``i`` (1-based, one per region) is the /30
``127.<octet>.i.0``, ``.1`` on the cascading end and ``.2`` on the region's end.
Only the 127.0.0.0/8 range is used, never a private or public one: that needs
``route_localnet`` on every device, and each namespace's ``lo`` keeps only
``127.0.0.1/32`` (with the usual ``/8`` every 127.x address would be local and the
peers unreachable).  Addresses in 127/8 get host scope, so the region's route to
the site address names its source explicitly.

:func:`setup_commands` and :func:`teardown_commands` are the ``ip``/``tc`` command
lines (pure); :func:`setup`, :func:`teardown`, :func:`enter` and
:func:`tx_bytes` run them.  Every egress of a link is shaped by ``tbf`` (or by
``netem`` when a delay is asked for), in both directions.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Link:
    """One region's link to the cascading site."""

    region: str
    ns: str
    casc_dev: str
    region_dev: str
    casc_addr: str
    region_addr: str
    peer_addr: str = ""  # where the region's cache sshd listens; "" without peers


@dataclass(frozen=True)
class PeerLink:
    """The link between two regions: end ``a`` (the lower-numbered region) and end ``b``."""

    a_ns: str
    b_ns: str
    a_dev: str
    b_dev: str
    a_addr: str
    b_addr: str


@dataclass(frozen=True)
class Plan:
    """Namespaces, devices and addresses of one bench run."""

    casc_ns: str
    site_addr: str
    links: tuple[Link, ...]
    peer_links: tuple[PeerLink, ...] = ()

    @property
    def namespaces(self) -> list[str]:
        return [self.casc_ns, *(link.ns for link in self.links)]

    @property
    def peers(self) -> bool:
        return bool(self.links and self.links[0].peer_addr)


# Peer link (i, j) is 127.<octet>.i.<4j>/30: 4j + 3 <= 255.
MAX_PEER_REGIONS = 63


def plan(regions: list[str], tag: str, octet: int = 77, peers: bool = False) -> Plan:
    """The address plan for ``regions``; ``tag`` keeps names apart from other runs (<= 6 chars).

    ``peers``: also a peer address per region and a link between every two regions.
    """
    if not 1 <= octet <= 254:
        raise ValueError("the second octet must be between 1 and 254")
    if not 1 <= len(regions) <= (MAX_PEER_REGIONS if peers else 254):
        raise ValueError(f"between 1 and {MAX_PEER_REGIONS if peers else 254} regions")
    if not tag.isalnum() or len(tag) > 6:
        raise ValueError("the tag is up to 6 letters or digits")
    links = tuple(
        Link(region=name, ns=f"gsw{tag}-{name.lower()}", casc_dev=f"gw{tag}c{i}", region_dev=f"gw{tag}r{i}",
             casc_addr=f"127.{octet}.{i}.1", region_addr=f"127.{octet}.{i}.2",
             peer_addr=f"127.{octet}.0.{1 + i}" if peers else "")
        for i, name in enumerate(regions, start=1)
    )
    peer_links = tuple(
        PeerLink(a_ns=links[i - 1].ns, b_ns=links[j - 1].ns, a_dev=f"gw{tag}{i}p{j}", b_dev=f"gw{tag}{j}p{i}",
                 a_addr=f"127.{octet}.{i}.{4 * j + 1}", b_addr=f"127.{octet}.{i}.{4 * j + 2}")
        for i in range(1, len(links) + 1) for j in range(i + 1, len(links) + 1)
    ) if peers else ()
    return Plan(casc_ns=f"gsw{tag}-casc", site_addr=f"127.{octet}.0.1", links=links, peer_links=peer_links)


def shaping(dev: str, rate_mbit: float, delay_ms: float, burst_kib: int) -> list[str]:
    """The qdisc of one link end: tbf at ``rate_mbit``, or netem (delay + rate) when ``delay_ms``."""
    if delay_ms > 0:
        # netem's own rate keeps the shaper and the delay in one qdisc; the limit holds a BDP or more.
        limit = max(1000, int(rate_mbit * 1e6 / 8 * (2 * delay_ms / 1000) / 1500) * 2)
        return ["qdisc", "add", "dev", dev, "root", "netem", "delay", f"{delay_ms:g}ms",
                "rate", f"{rate_mbit:g}mbit", "limit", str(limit)]
    return ["qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit:g}mbit",
            "burst", f"{burst_kib}kb", "latency", "50ms"]


def _namespace_base(ns: str) -> list[list[str]]:
    sysctls = [f"net.ipv4.conf.{dev}.route_localnet=1" for dev in ("all", "default", "lo")]
    return [
        ["ip", "netns", "add", ns],
        ["ip", "netns", "exec", ns, "sysctl", "-qw", *sysctls],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo"],
        ["ip", "-n", ns, "addr", "add", "127.0.0.1/32", "dev", "lo"],
    ]


def setup_commands(p: Plan, rate_mbit: float, delay_ms: float = 0, burst_kib: int = 512) -> list[list[str]]:
    """Every command that builds the network of ``p``, in order."""
    cmds = [cmd for ns in p.namespaces for cmd in _namespace_base(ns)]
    cmds.append(["ip", "-n", p.casc_ns, "addr", "add", f"{p.site_addr}/32", "dev", "lo"])
    for link in p.links:
        c, r = p.casc_ns, link.ns
        cmds += _veth(c, link.casc_dev, link.casc_addr, r, link.region_dev, link.region_addr)
        cmds += [
            ["ip", "-n", r, "route", "add", f"{p.site_addr}/32", "via", link.casc_addr, "src", link.region_addr],
            ["tc", "-n", c, *shaping(link.casc_dev, rate_mbit, delay_ms, burst_kib)],
            ["tc", "-n", r, *shaping(link.region_dev, rate_mbit, delay_ms, burst_kib)],
        ]
    return cmds + _peer_commands(p, rate_mbit, delay_ms, burst_kib)


def _veth(ns_a: str, dev_a: str, addr_a: str, ns_b: str, dev_b: str, addr_b: str) -> list[list[str]]:
    """A veth pair between two namespaces, a /30 address on each end, both up."""
    return [
        ["ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b],
        ["ip", "netns", "exec", ns_a, "sysctl", "-qw", f"net.ipv4.conf.{dev_a}.route_localnet=1"],
        ["ip", "netns", "exec", ns_b, "sysctl", "-qw", f"net.ipv4.conf.{dev_b}.route_localnet=1"],
        ["ip", "-n", ns_a, "addr", "add", f"{addr_a}/30", "dev", dev_a],
        ["ip", "-n", ns_b, "addr", "add", f"{addr_b}/30", "dev", dev_b],
        ["ip", "-n", ns_a, "link", "set", dev_a, "up"],
        ["ip", "-n", ns_b, "link", "set", dev_b, "up"],
    ]


def _peer_commands(p: Plan, rate_mbit: float, delay_ms: float, burst_kib: int) -> list[list[str]]:
    """Peer addresses, region-to-region links and their routes (nothing without peers)."""
    if not p.peers:
        return []
    cmds = []
    for link in p.links:
        cmds += [
            ["ip", "-n", link.ns, "addr", "add", f"{link.peer_addr}/32", "dev", "lo"],
            # Only for the bench's readiness checks of the cache sshd: agents use the peer links.
            ["ip", "-n", p.casc_ns, "route", "add", f"{link.peer_addr}/32", "via", link.region_addr,
             "src", link.casc_addr],
        ]
    by_ns = {link.ns: link for link in p.links}
    for pl in p.peer_links:
        a, b = by_ns[pl.a_ns], by_ns[pl.b_ns]
        cmds += _veth(a.ns, pl.a_dev, pl.a_addr, b.ns, pl.b_dev, pl.b_addr)
        cmds += [
            ["ip", "-n", a.ns, "route", "add", f"{b.peer_addr}/32", "via", pl.b_addr, "src", pl.a_addr],
            ["ip", "-n", b.ns, "route", "add", f"{a.peer_addr}/32", "via", pl.a_addr, "src", pl.b_addr],
            ["tc", "-n", a.ns, *shaping(pl.a_dev, rate_mbit, delay_ms, burst_kib)],
            ["tc", "-n", b.ns, *shaping(pl.b_dev, rate_mbit, delay_ms, burst_kib)],
        ]
    return cmds


def teardown_commands(p: Plan) -> list[list[str]]:
    """Deleting the namespaces deletes their veth pairs and qdiscs too."""
    return [["ip", "netns", "del", ns] for ns in p.namespaces]


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)  # noqa: S603
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result


def setup(p: Plan, rate_mbit: float, delay_ms: float = 0, burst_kib: int = 512) -> None:
    for cmd in setup_commands(p, rate_mbit, delay_ms, burst_kib):
        _run(cmd)


def teardown(p: Plan) -> None:
    """Kill what still runs in our namespaces (only ours: they hold nothing else), then delete them."""
    existing = set(_run(["ip", "netns", "list"], check=False).stdout.split())
    for ns in p.namespaces:
        if ns not in existing:
            continue
        for pid in _run(["ip", "netns", "pids", ns], check=False).stdout.split():
            if int(pid) != os.getpid():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _run(["ip", "netns", "del", ns], check=False)


def enter(ns: str) -> None:
    """Move this (still single-threaded) process into namespace ``ns``: Python 3.11 has no os.setns."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
    finally:
        os.close(fd)


def tx_bytes(ns: str, dev: str) -> int:
    """Bytes sent by ``dev`` (``ip netns exec`` mounts that namespace's /sys; ours shows another)."""
    return int(_run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes"]).stdout)


def site_tx_bytes(p: Plan) -> int:
    """Bytes the cascading site sent over all its links."""
    return sum(tx_bytes(p.casc_ns, link.casc_dev) for link in p.links)


def peer_tx_bytes(p: Plan) -> int:
    """Bytes sent over the region-to-region links, both ways (0 without peers)."""
    return sum(tx_bytes(pl.a_ns, pl.a_dev) + tx_bytes(pl.b_ns, pl.b_dev) for pl in p.peer_links)
