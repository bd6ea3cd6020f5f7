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


@dataclass(frozen=True)
class Plan:
    """Namespaces, devices and addresses of one bench run."""

    casc_ns: str
    site_addr: str
    links: tuple[Link, ...]

    @property
    def namespaces(self) -> list[str]:
        return [self.casc_ns, *(link.ns for link in self.links)]


def plan(regions: list[str], tag: str, octet: int = 77) -> Plan:
    """The address plan for ``regions``; ``tag`` keeps names apart from other runs (<= 6 chars)."""
    if not 1 <= octet <= 254:
        raise ValueError("the second octet must be between 1 and 254")
    if not 1 <= len(regions) <= 254:
        raise ValueError("between 1 and 254 regions")
    if not tag.isalnum() or len(tag) > 6:
        raise ValueError("the tag is up to 6 letters or digits")
    links = tuple(
        Link(region=name, ns=f"gsw{tag}-{name.lower()}", casc_dev=f"gw{tag}c{i}", region_dev=f"gw{tag}r{i}",
             casc_addr=f"127.{octet}.{i}.1", region_addr=f"127.{octet}.{i}.2")
        for i, name in enumerate(regions, start=1)
    )
    return Plan(casc_ns=f"gsw{tag}-casc", site_addr=f"127.{octet}.0.1", links=links)


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
        cmds += [
            ["ip", "link", "add", link.casc_dev, "netns", c, "type", "veth",
             "peer", "name", link.region_dev, "netns", r],
            ["ip", "netns", "exec", c, "sysctl", "-qw", f"net.ipv4.conf.{link.casc_dev}.route_localnet=1"],
            ["ip", "netns", "exec", r, "sysctl", "-qw", f"net.ipv4.conf.{link.region_dev}.route_localnet=1"],
            ["ip", "-n", c, "addr", "add", f"{link.casc_addr}/30", "dev", link.casc_dev],
            ["ip", "-n", r, "addr", "add", f"{link.region_addr}/30", "dev", link.region_dev],
            ["ip", "-n", c, "link", "set", link.casc_dev, "up"],
            ["ip", "-n", r, "link", "set", link.region_dev, "up"],
            ["ip", "-n", r, "route", "add", f"{p.site_addr}/32", "via", link.casc_addr, "src", link.region_addr],
            ["tc", "-n", c, *shaping(link.casc_dev, rate_mbit, delay_ms, burst_kib)],
            ["tc", "-n", r, *shaping(link.region_dev, rate_mbit, delay_ms, burst_kib)],
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
