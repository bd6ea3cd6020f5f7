"""The WAN bench's peer mode, pure parts: region-to-region links, their routes, the modes, the report."""

from __future__ import annotations

import ipaddress
import sqlite3
from itertools import combinations
from pathlib import Path

import msgpack
import pytest

from bench import wan, wan_net, wan_peers

REGIONS = ["RegionA", "RegionB", "RegionC", "RegionD"]
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def _net(addr: str) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"{addr}/30", strict=False)


def _addresses_in(cmds: list[list[str]]) -> list[ipaddress.IPv4Address]:
    """Every word of the command lines that is an address or a network."""
    found = []
    for word in (w for cmd in cmds for w in cmd):
        try:
            found.append(ipaddress.ip_interface(word).ip)
        except ValueError:
            continue
    return found


def _routes(cmds: list[list[str]], ns: str) -> dict[str, tuple[str, str]]:
    """Destination -> (via, src) of the routes added in ``ns``."""
    return {c[5]: (c[c.index("via") + 1], c[c.index("src") + 1])
            for c in cmds if c[:5] == ["ip", "-n", ns, "route", "add"]}


def _addrs_of(cmds: list[list[str]], ns: str) -> dict[str, str]:
    """Device -> address added in ``ns``."""
    return {c[-1]: c[5] for c in cmds if c[:5] == ["ip", "-n", ns, "addr", "add"]}


def test_peer_plan_joins_every_two_regions_on_loopback_30s_apart_from_the_star():
    plan = wan_net.plan(REGIONS, tag="ab12", peers=True)
    assert plan.peers
    assert len(plan.peer_links) == len(list(combinations(REGIONS, 2)))
    pairs = {frozenset((pl.a_ns, pl.b_ns)) for pl in plan.peer_links}
    assert pairs == {frozenset((a.ns, b.ns)) for a, b in combinations(plan.links, 2)}
    star = [_net(link.casc_addr) for link in plan.links]
    peer = [_net(pl.a_addr) for pl in plan.peer_links]
    for pl in plan.peer_links:
        assert _net(pl.b_addr) == _net(pl.a_addr) and pl.a_addr != pl.b_addr
    nets = star + peer
    assert all(not a.overlaps(b) for a, b in combinations(nets, 2))
    singles = [plan.site_addr, *(link.peer_addr for link in plan.links)]
    assert len(set(singles)) == len(singles)
    for addr in singles:
        assert not any(ipaddress.ip_address(addr) in net for net in nets)
    every = [*singles, *(a for pl in plan.peer_links for a in (pl.a_addr, pl.b_addr)),
             *(a for link in plan.links for a in (link.casc_addr, link.region_addr))]
    assert all(ipaddress.ip_address(a) in LOOPBACK for a in every)


def test_peer_device_names_fit_and_are_unique_per_namespace():
    plan = wan_net.plan([f"R{i}" for i in range(wan_net.MAX_PEER_REGIONS)], tag="ffffff", peers=True)
    devs = [(pl.a_ns, pl.a_dev) for pl in plan.peer_links] + [(pl.b_ns, pl.b_dev) for pl in plan.peer_links]
    devs += [(link.ns, link.region_dev) for link in plan.links]
    assert all(len(dev) <= 15 for _, dev in devs)  # IFNAMSIZ - 1
    assert len(set(devs)) == len(devs)
    assert len({dev for _, dev in devs}) == len(devs)  # a veth pair is created under both names at once
    assert all(ipaddress.ip_address(pl.b_addr) in LOOPBACK for pl in plan.peer_links)


def test_peer_plan_refuses_more_regions_than_the_30s_hold():
    with pytest.raises(ValueError):
        wan_net.plan([f"R{i}" for i in range(wan_net.MAX_PEER_REGIONS + 1)], tag="a", peers=True)
    assert len(wan_net.plan([f"R{i}" for i in range(100)], tag="a").links) == 100  # no peers: the star only


def test_every_region_reaches_every_other_cache_over_their_own_link_never_the_cascading_site():
    plan = wan_net.plan(REGIONS, tag="t3", peers=True)
    cmds = wan_net.setup_commands(plan, rate_mbit=100)
    for a, b in combinations(plan.links, 2):
        pl = next(p for p in plan.peer_links if {p.a_ns, p.b_ns} == {a.ns, b.ns})
        end = {pl.a_ns: (pl.a_dev, pl.a_addr), pl.b_ns: (pl.b_dev, pl.b_addr)}
        for here, there in ((a, b), (b, a)):
            via, src = _routes(cmds, here.ns)[f"{there.peer_addr}/32"]
            assert (via, src) == (end[there.ns][1], end[here.ns][1])
            # the source is this namespace's end of that link, and the gateway is on the same /30
            assert _addrs_of(cmds, here.ns)[end[here.ns][0]] == f"{end[here.ns][1]}/30"
            assert ipaddress.ip_address(via) in _net(src)
            assert via not in {link.casc_addr for link in plan.links}
    for link in plan.links:
        assert ["ip", "-n", link.ns, "addr", "add", f"{link.peer_addr}/32", "dev", "lo"] in cmds
        # the cascading site's route to a cache is its star link (readiness checks only)
        assert _routes(cmds, plan.casc_ns)[f"{link.peer_addr}/32"] == (link.region_addr, link.casc_addr)
    assert all(ip in LOOPBACK for ip in _addresses_in(cmds))
    assert not any("ip_forward" in word for cmd in cmds for word in cmd)


def test_peer_links_are_shaped_on_both_ends_with_route_localnet():
    plan = wan_net.plan(REGIONS, tag="t4", peers=True)
    cmds = wan_net.setup_commands(plan, rate_mbit=200)
    shaped = {(c[2], c[c.index("dev") + 1]) for c in cmds if c[0] == "tc" and "tbf" in c and "200mbit" in c}
    sysctl = {(c[3], c[-1]) for c in cmds if "sysctl" in c}
    for pl in plan.peer_links:
        for ns, dev in ((pl.a_ns, pl.a_dev), (pl.b_ns, pl.b_dev)):
            assert (ns, dev) in shaped
            assert (ns, f"net.ipv4.conf.{dev}.route_localnet=1") in sysctl
    assert len(shaped) == 2 * (len(plan.links) + len(plan.peer_links))


def test_without_peers_the_network_is_the_star_alone():
    plain = wan_net.plan(REGIONS, tag="t5")
    assert not plain.peers and plain.peer_links == ()
    cmds = wan_net.setup_commands(plain, rate_mbit=100)
    assert sum(c[0] == "tc" for c in cmds) == 2 * len(REGIONS)
    assert not any(c[:5] == ["ip", "-n", plain.casc_ns, "route", "add"] for c in cmds)


def test_peer_bytes_sum_both_ends_of_every_peer_link(monkeypatch):
    plan = wan_net.plan(REGIONS[:3], tag="t6", peers=True)
    counters = {(pl.a_ns, pl.a_dev): 10 for pl in plan.peer_links} | {(pl.b_ns, pl.b_dev): 1 for pl in plan.peer_links}
    counters |= {(plan.casc_ns, link.casc_dev): 1000 for link in plan.links}
    monkeypatch.setattr(wan_net, "tx_bytes", lambda ns, dev: counters[(ns, dev)])
    assert wan_net.peer_tx_bytes(plan) == 33
    assert wan_net.site_tx_bytes(plan) == 3000
    assert wan_net.peer_tx_bytes(wan_net.plan(REGIONS[:3], tag="t6")) == 0


def test_conf_options_parse_and_bad_ones_are_refused():
    assert wan_peers.parse_conf_opt("coordinator.chain_sources=true") == ("coordinator", "chain_sources", "true")
    assert wan_peers.parse_conf_opt("agent.workers=4") == ("agent", "workers", "4")
    for bad in ("chain_sources=true", "coordinator.=1", "coordinator.x=", ".x=1", "a.b=1\nc.d=2", "a b.c=1"):
        with pytest.raises(ValueError):
            wan_peers.parse_conf_opt(bad)


def test_modes_star_tree_and_tree_with_more_options():
    assert [m.key for m in wan_peers.modes(None, [])] == ["project"]
    star, tree = wan_peers.modes(1, [])
    assert not star.peers and star.conf == {}
    assert tree.peers and tree.conf == {"coordinator": {"max_source_fanout": 1}}
    *_, more = wan_peers.modes(2, [("coordinator", "chain_sources", "true"), ("agent", "workers", "3")])
    assert more.peers and more.key == "peers_opts"
    assert more.conf == {"coordinator": {"max_source_fanout": 2, "chain_sources": "true"}, "agent": {"workers": "3"}}
    assert wan_peers.modes(2, [("coordinator", "chain_sources", "true")])[1].conf == {
        "coordinator": {"max_source_fanout": 2}}


def test_peer_arguments():
    args = wan.parse_args([])
    assert (args.fanout, args.extra_opts, args.no_peers) == (1, [], False)
    args = wan.parse_args(["--fanout", "2", "--coordinator-opt", "coordinator.chain_sources=true",
                           "--coordinator-opt", "coordinator.x=1"])
    assert args.fanout == 2 and args.extra_opts == [("coordinator", "chain_sources", "true"), ("coordinator", "x", "1")]


@pytest.mark.parametrize("argv", [["--coordinator-opt", "nodot"], ["--fanout", "-1"],
                                  ["--no-peers", "--coordinator-opt", "coordinator.x=1"]])
def test_bad_peer_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        wan.parse_args(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_report_puts_each_project_mode_beside_the_baselines_with_its_targets():
    args = wan.parse_args(["--size-mib", "256", "--rate-mbit", "100"])
    size = 256 * wan.MIB
    floor = wan.link_floor(size, 100)

    def row(times: float, site: float, peer: float = 0.0) -> dict[str, float]:
        return {"wall": times * floor, "wall_min": times * floor, "wall_max": times * floor,
                "site_bytes": site * size, "peer_bytes": peer * size}

    results = {"project": row(2.0, 3.0), "peers": row(1.2, 1.0, 2.0), "scp": row(1.1, 3.0), "relay": row(3.0, 3.0)}
    lines = wan.report(args, results, wan_peers.modes(1, []), (1.0, 2.0, 3.0), "2026-12-01 01:00 UTC")
    text = "\n".join(lines)
    assert "load 1.0 2.0 3.0" in text and "2026-12-01 01:00 UTC" in text
    peers_line = next(line for line in lines if line.startswith("project, peers (fanout 1)"))
    assert "256 MiB" in peers_line and "512 MiB" in peers_line  # cascading site once, peer links twice
    star_line = next(line for line in lines if line.startswith("project, no peers"))
    assert star_line.split()[-2:] == ["0", "MiB"]
    site = next(line for line in lines if "cascading-site bytes / S" in line)
    assert site.split()[-4:] == ["3.00", "MISSED", "1.00", "met"]
    relay = next(line for line in lines if "relay / project" in line)
    assert relay.split()[-4:] == ["1.50", "MISSED", "2.50", "met"]


def test_sources_counts_where_each_synced_copy_came_from(tmp_path: Path):
    journal = tmp_path / "journal.sqlite"
    with sqlite3.connect(journal) as db:
        db.execute("CREATE TABLE tasks (image_id TEXT, kind TEXT, state TEXT, report BLOB)")
        rows = [("i1", "copy", "synced", {"fetched_from": "cascading"}), ("i1", "copy", "synced",
                {"fetched_from": "RegionA"}), ("i1", "copy", "synced", {"fetched_from": "RegionA"}),
                ("i1", "copy", "failed", {"fetched_from": "RegionB"}), ("i1", "delete", "synced", None),
                ("i2", "copy", "synced", {"fetched_from": "RegionB"})]
        db.executemany("INSERT INTO tasks VALUES (?, ?, ?, ?)",
                       [(i, k, s, None if r is None else msgpack.packb(r)) for i, k, s, r in rows])
    assert wan_peers.sources(journal, "i1") == {"cascading": 1, "RegionA": 2}


def test_cache_sshd_runs_in_the_region_namespace_on_its_peer_address(tmp_path: Path):
    server = wan_peers.NsSshServer(tmp_path, "gswx-regiona", "127.77.0.2")
    assert server.command()[:4] == ["ip", "netns", "exec", "gswx-regiona"]
    assert "ListenAddress 127.77.0.2" in server.config_text().splitlines()


class FakeTopo:
    region_names = REGIONS[:3]

    def __init__(self) -> None:
        self.restarts: list[tuple[dict, dict, str]] = []

    def restart_services(self, conf: dict, per_region: dict, suffix: str) -> None:
        self.restarts.append((conf, per_region, suffix))


class FakePeers:
    cache_max_bytes = 7

    def __init__(self) -> None:
        self.used: list[bool] = []

    def use(self, peers: bool) -> None:
        self.used.append(peers)

    def agent_options(self, region: str) -> dict:
        return {"cache_dir": f"/peers/{region}/root/cache", "cache_max_bytes": self.cache_max_bytes}


def test_switching_modes_restarts_with_the_peer_files_cache_and_fanout_only_when_the_mode_changes(tmp_path):
    args = wan.parse_args(["--fanout", "1"])
    topo, peers = FakeTopo(), FakePeers()
    rounds = wan.Rounds(args, wan_net.plan(topo.region_names, tag="t7", peers=True), tmp_path, topo, peers)
    star, tree = rounds.modes
    rounds.switch(tree)
    rounds.switch(tree)
    rounds.switch(star)
    assert peers.used == [True, False]
    (conf, per_region, first), (plain_conf, plain_agents, second) = topo.restarts
    assert conf == {"coordinator": {"max_source_fanout": 1}}
    assert per_region == {r: {"cache_dir": f"/peers/{r}/root/cache", "cache_max_bytes": 7} for r in topo.region_names}
    assert (plain_conf, plain_agents) == ({}, {})
    assert first != second  # new agent ids after each restart


def test_without_peers_there_is_one_mode_and_no_peer_files(tmp_path):
    topo = FakeTopo()
    rounds = wan.Rounds(wan.parse_args(["--no-peers"]), wan_net.plan(topo.region_names, tag="t8"), tmp_path, topo,
                        None)
    assert [m.key for m in rounds.modes] == ["project"]
    rounds.switch(rounds.modes[0])
    assert topo.restarts == [({}, {}, "project1")]
