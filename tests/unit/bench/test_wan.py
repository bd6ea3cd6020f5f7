"""The WAN bench's pure parts: address plan, ip/tc command lines, ratios, arguments."""

from __future__ import annotations

import ipaddress

import pytest

from bench import wan, wan_net

REGIONS = ["RegionA", "RegionB", "RegionC"]


def test_plan_uses_only_loopback_range_and_distinct_links():
    plan = wan_net.plan(REGIONS, tag="ab12")
    addrs = [plan.site_addr] + [a for link in plan.links for a in (link.casc_addr, link.region_addr)]
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("127.0.0.0/8") for a in addrs)
    assert len(set(addrs)) == len(addrs)
    for link in plan.links:
        net = ipaddress.ip_network(f"{link.casc_addr}/30", strict=False)
        assert ipaddress.ip_address(link.region_addr) in net
        assert ipaddress.ip_address(plan.site_addr) not in net
    nets = {ipaddress.ip_network(f"{link.casc_addr}/30", strict=False) for link in plan.links}
    assert len(nets) == 3


def test_plan_names_fit_the_kernel_limits():
    plan = wan_net.plan(REGIONS, tag="ffffff")
    devs = [d for link in plan.links for d in (link.casc_dev, link.region_dev)]
    assert all(len(d) <= 15 for d in devs)  # IFNAMSIZ - 1
    assert len(set(devs)) == len(devs)
    assert len(set(plan.namespaces)) == 4
    assert plan.namespaces[0] == plan.casc_ns


@pytest.mark.parametrize("kwargs", [{"tag": "a-b"}, {"tag": "toolong7"}, {"tag": "a", "octet": 0},
                                    {"tag": "a", "octet": 255}])
def test_plan_refuses_bad_input(kwargs):
    with pytest.raises(ValueError):
        wan_net.plan(REGIONS, **kwargs)


def test_setup_shapes_both_ends_and_sets_route_localnet():
    plan = wan_net.plan(REGIONS, tag="t1")
    cmds = wan_net.setup_commands(plan, rate_mbit=400)
    tbf = [c for c in cmds if c[0] == "tc"]
    assert len(tbf) == 2 * len(REGIONS)
    assert all("tbf" in c and "400mbit" in c for c in tbf)
    shaped = {c[c.index("dev") + 1] for c in tbf}
    assert shaped == {d for link in plan.links for d in (link.casc_dev, link.region_dev)}
    sysctl = " ".join(" ".join(c) for c in cmds if "sysctl" in c)
    for link in plan.links:
        assert f"net.ipv4.conf.{link.casc_dev}.route_localnet=1" in sysctl
        assert f"net.ipv4.conf.{link.region_dev}.route_localnet=1" in sysctl
        route = next(c for c in cmds if c[:4] == ["ip", "-n", link.ns, "route"])
        assert route[-2:] == ["src", link.region_addr]  # 127/8 addresses have host scope
    # every namespace's lo loses its /8, or the peers would be local
    assert sum(c[-4:] == ["del", "127.0.0.1/8", "dev", "lo"] for c in cmds) == 4


def test_delay_switches_to_netem():
    cmd = wan_net.shaping("dev0", 200, delay_ms=25, burst_kib=512)
    assert cmd[5:8] == ["netem", "delay", "25ms"] and "200mbit" in cmd


def test_teardown_deletes_every_namespace():
    plan = wan_net.plan(REGIONS, tag="t2")
    assert wan_net.teardown_commands(plan) == [["ip", "netns", "del", ns] for ns in plan.namespaces]


def test_link_floor_and_ratios():
    size = 1024 * wan.MIB
    floor = wan.link_floor(size, 400)
    assert floor == pytest.approx(21.47, abs=0.01)
    results = {"project": {"wall": 2 * floor, "site_bytes": 3 * size},
               "relay": {"wall": 3 * floor, "site_bytes": 3 * size}}
    got = wan.ratios(size, floor, results)
    assert got == pytest.approx({"project_vs_floor": 2.0, "relay_vs_project": 1.5, "site_bytes_vs_size": 3.0})
    assert not any(wan.target_met(name, value) for name, value in got.items())
    assert wan.target_met("relay_vs_project", 2.5) and wan.target_met("project_vs_floor", 1.3)
    assert wan.target_met("site_bytes_vs_size", 1.0)


def test_arguments():
    args = wan.parse_args([])
    assert (args.size_mib, args.regions, args.rate_mbit, args.delay_ms) == (1024, 3, 400.0, 0.0)
    args = wan.parse_args(["--size-mib", "128", "--rate-mbit", "200", "--regions", "2"])
    assert (args.size_mib, args.regions, args.rate_mbit) == (128, 2, 200.0)


@pytest.mark.parametrize("argv", [["--size-mib", "0"], ["--regions", "0"], ["--rate-mbit", "-1"],
                                  ["--size-mib", "x"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        wan.parse_args(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err
