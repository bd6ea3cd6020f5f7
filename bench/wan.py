"""One image to every region over rate-limited WAN links: the project beside the naive ways, in one run.

Each site runs in its own network namespace (bench/wan_net.py: veth links shaped by
``tbf``, loopback-range addresses only).  The cascading site holds the cascading
glance-api (with the ``glancesync`` filter and ``cascaded://`` store), the chrooted
sshd serving its store, the coordinator and this process; each region holds its own
glance-api and agent, started inside the region's namespace, and (unless
``--no-peers``) a confined sshd serving its agent's cache (bench/wan_peers.py),
which the other regions reach over region-to-region links of the same rate.  One
random image of ``--size-mib`` is then sent to every region these ways, one after
the other:

- ``project``: uploaded to the cascading glance, timed from the end of the upload
  until glance-sync-status shows every region ``synced``; once with no peers (every
  region fetches from the store), once with peers and ``[coordinator]
  max_source_fanout = --fanout`` (the tree, doc/peers.md), and once more with peers
  and the ``--coordinator-opt`` options when some are given;
- ``link floor`` (S/link): the image's size over one link's rate, what a region
  cannot beat, and what all regions together reach when the links run in parallel;
- ``scp pulls``: OpenSSH ``scp`` of the store file from each region, in parallel;
- ``serial relay``: glanceclient download from the cascading glance, then one
  upload per region, one after the other (run from the cascading site).

The ways are run ``--rounds`` times (default 3), interleaved, each with a new image.
For each it prints the median wall time (and the range), the bytes the cascading
site sent over its links and the bytes the region-to-region links carried (veth
``tx_bytes`` before and after), then the ratios the issue sets as targets, on the
medians, for each project mode.  Then, unless ``--cap-mbit 0``, a capped run
(bench/wan_cap.py): each region's agent restarted with ``[agent] max_bandwidth``,
``--cap-copies`` images per region, and the rate each link carried beside the cap.
Namespaces and processes are removed on exit, Ctrl-C and failure.

Usage (root): ``.venv/bin/python bench/wan.py [--size-mib 1024] [--rate-mbit 400] [--rounds 3]
[--fanout 1] [--coordinator-opt section.key=value ...] [--no-peers] [--cap-mbit 80] [--cap-copies 2]``
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import wan_cap, wan_net, wan_peers  # noqa: E402

MIB = 1024 * 1024
TARGETS = {"project_vs_floor": 1.3, "relay_vs_project": 2.5, "site_bytes_vs_size": 1.3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="image size in MiB (default 1024)")
    parser.add_argument("--regions", type=int, default=3, help="number of regions (default 3)")
    parser.add_argument("--rate-mbit", type=float, default=400.0, help="rate of each link, Mbit/s (default 400)")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="one-way delay per link end (netem instead of tbf; default 0)")
    parser.add_argument("--burst-kib", type=int, default=512, help="tbf burst, KiB (default 512)")
    parser.add_argument("--octet", type=int, default=77, help="second octet of the 127.x addresses (default 77)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for each method")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the methods (each project mode, scp, relay); medians "
                        "are reported (default 3; 0: only the capped run)")
    parser.add_argument("--cap-mbit", type=float, default=80.0, help="max_bandwidth of each region's agent in the "
                        "capped run, Mbit/s; 0 skips that run (default 80)")
    parser.add_argument("--cap-copies", type=int, default=2, help="images per region in the capped run, copied "
                        "side by side under the one cap (default 2)")
    parser.add_argument("--fanout", type=int, default=1, help="[coordinator] max_source_fanout of the peer "
                        "mode (default 1: the store sends each image once)")
    parser.add_argument("--coordinator-opt", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a glance-sync.conf option of one more peer mode (repeatable), e.g. "
                        "coordinator.chain_sources=true; that mode runs beside the plain tree")
    parser.add_argument("--no-peers", action="store_true", help="no region-to-region links, no peer mode")
    args = parser.parse_args(argv)
    try:
        args.extra_opts = [wan_peers.parse_conf_opt(text) for text in args.coordinator_opt]
    except ValueError as exc:
        parser.error(f"--coordinator-opt {exc}")
    if args.fanout < 0 or (args.no_peers and args.extra_opts):
        parser.error("--fanout >= 0; --coordinator-opt needs the peer mode (not with --no-peers)")
    if args.size_mib < 1 or not 1 <= args.regions <= 26 or args.rate_mbit <= 0 or args.delay_ms < 0:
        parser.error("--size-mib >= 1, --regions 1..26, --rate-mbit > 0, --delay-ms >= 0")
    if args.rounds < 0 or args.cap_mbit < 0 or args.cap_copies < 1 or not (args.rounds or args.cap_mbit):
        parser.error("--rounds >= 0, --cap-mbit >= 0 (not both 0), --cap-copies >= 1")
    return args


def link_floor(size_bytes: int, rate_mbit: float) -> float:
    """Seconds one link needs for ``size_bytes`` (S/link)."""
    return size_bytes * 8 / (rate_mbit * 1e6)


def ratios(size_bytes: int, floor: float, results: dict[str, dict[str, float]],
           project: str = "project") -> dict[str, float]:
    """The issue's three figures for the project mode ``project``: project/floor, relay/project (speed-up)
    and cascading-site bytes/size."""
    row = results[project]
    return {
        "project_vs_floor": row["wall"] / floor,
        "relay_vs_project": results["relay"]["wall"] / row["wall"],
        "site_bytes_vs_size": row["site_bytes"] / size_bytes,
    }


def target_met(name: str, value: float) -> bool:
    """relay_vs_project is a speed-up (bigger is better); the others are costs."""
    return value >= TARGETS[name] if name == "relay_vs_project" else value <= TARGETS[name]


def _measured(plan: wan_net.Plan, run: Any) -> dict[str, float]:
    started = time.monotonic()  # the clock first: reading the counters takes a few processes
    before = wan_net.site_tx_bytes(plan), wan_net.peer_tx_bytes(plan)
    run()
    wall = time.monotonic() - started
    return {"wall": wall, "site_bytes": wan_net.site_tx_bytes(plan) - before[0],
            "peer_bytes": wan_net.peer_tx_bytes(plan) - before[1]}


class Rounds:
    """Runs the rounds on a started topology: each project mode (restarting our services between two
    modes), then the scp pulls and the serial relay."""

    def __init__(self, args: argparse.Namespace, plan: wan_net.Plan, base: Path, topo: Any,
                 peers: wan_peers.WanPeers | None) -> None:
        self.args, self.plan, self.base, self.topo, self.peers = args, plan, base, topo, peers
        self.modes = wan_peers.modes(None if peers is None else args.fanout, args.extra_opts)
        self.current: wan_peers.Mode | None = None
        self.restarts = 0

    def switch(self, mode: wan_peers.Mode) -> None:
        if mode == self.current:
            return
        per_region: dict[str, dict[str, Any]] = {}
        if self.peers is not None:
            self.peers.use(mode.peers)
            if mode.peers:
                per_region = {name: self.peers.agent_options(name) for name in self.topo.region_names}
        self.restarts += 1
        self.topo.restart_services(mode.conf, per_region, suffix=f"{mode.key.replace('_', '')}{self.restarts}")
        self.current = mode

    def project(self, mode: wan_peers.Mode) -> tuple[str, dict[str, float]]:
        """One new image through the project in ``mode``: its id and figures."""
        self.switch(mode)
        image_id, upload = self.topo.upload(self.args.size_mib * MIB)
        result = _measured(self.plan, lambda: self.topo.wait_synced(image_id, upload, self.args.timeout))
        served = wan_peers.sources(self.topo.journal_path, image_id)
        print(f"  {mode.label}: {result['wall']:.1f} s, copies fetched from "
              + ", ".join(f"{source} {count}" for source, count in sorted(served.items())), flush=True)
        return image_id, result

    def one(self) -> dict[str, dict[str, float]]:
        """project (each mode), scp pulls and serial relay of new images."""
        results: dict[str, dict[str, float]] = {}
        for mode in self.modes:
            image_id, results[mode.key] = self.project(mode)
        topo, source = self.topo, self.topo.store_file(image_id)
        results["scp"] = _measured(self.plan, lambda: topo.scp_pulls(source, self.args.timeout))
        results["relay"] = _measured(self.plan, lambda: topo.serial_relay(image_id, self.base / "relay.img"))
        for server in topo.cascaded.values():  # the relay's copies: only disk space from here on
            client = server.client()
            for image in list(client.images.list(filters={"name": "bench-wan-relay"})):
                client.images.delete(image["id"])
        return results


def medians(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per method and figure, the median over the rounds, plus ``wall_min`` and ``wall_max``."""
    out: dict[str, dict[str, float]] = {}
    for method in rounds[0] if rounds else ():
        walls = [r[method]["wall"] for r in rounds]
        out[method] = {key: statistics.median(r[method][key] for r in rounds) for key in rounds[0][method]}
        out[method].update(wall_min=min(walls), wall_max=max(walls))
    return out


def run(args: argparse.Namespace, plan: wan_net.Plan,
        base: Path) -> tuple[dict[str, dict[str, float]], list[wan_peers.Mode], list[str]]:
    from bench import wan_sites  # after enter(): the harness picks ports in this namespace

    with wan_sites.WanTopology(base / "topo", plan) as topo:
        peers = None
        if plan.peers:
            peers = wan_peers.WanPeers(topo, plan, cache_max_bytes=max(1024, 3 * args.size_mib) * MIB)
        try:
            if peers is not None:
                peers.start()
            rounds_runner = Rounds(args, plan, base, topo, peers)
            rounds = []
            for number in range(1, args.rounds + 1):
                print(f"round {number}:", flush=True)
                rounds.append(rounds_runner.one())
                print(f"round {number}: " + ", ".join(f"{k} {v['wall']:.1f} s" for k, v in rounds[-1].items()),
                      flush=True)
            capped: list[str] = []
            if args.cap_mbit > 0:
                if rounds_runner.current is None or rounds_runner.current.peers:
                    rounds_runner.switch(rounds_runner.modes[0])  # the capped run measures the store's links
                result = wan_cap.capped_run(topo, plan, args.size_mib * MIB, args.cap_mbit, args.cap_copies,
                                            args.timeout)
                capped = wan_cap.report(result, args.cap_mbit)
        finally:
            if peers is not None:
                topo.stop_services()  # agents first: they hold files of the caches the sshds serve
                peers.stop()
    return medians(rounds), rounds_runner.modes, capped


TARGET_LABELS = {"project_vs_floor": "project / (S/link)       <=", "relay_vs_project": "relay / project          >=",
                 "site_bytes_vs_size": "cascading-site bytes / S <="}


def report(args: argparse.Namespace, results: dict[str, dict[str, float]], modes: list[wan_peers.Mode],
           load: tuple[float, ...], when: str) -> list[str]:
    """The table of the medians, every project mode beside the baselines, then the targets per mode."""
    size = args.size_mib * MIB
    floor = link_floor(size, args.rate_mbit)
    rows = [(mode.label, mode.key) for mode in modes]
    rows += [("scp pulls, parallel", "scp"), ("serial relay (download, uploads)", "relay")]
    w = max(34, *(len(label) + 2 for label, _ in rows))
    lines = [f"\n{args.size_mib} MiB image to {args.regions} regions, links {args.rate_mbit:g} Mbit/s"
             f"{f' + {args.delay_ms:g} ms' if args.delay_ms else ''}, {when}, {platform.node()}, "
             f"{os.cpu_count()} CPUs, load {' '.join(f'{x:.1f}' for x in load)}",
             f"medians of {args.rounds} interleaved round(s)",
             f"{'method':<{w}}{'wall s':>9}{'range':>14}{'x S/link':>10}{'cascading site':>18}{'x S':>7}"
             f"{'peer links':>14}",
             f"{'link floor S/link':<{w}}{floor:>9.1f}{'-':>14}{1:>10.2f}{'-':>18}{'-':>7}{'-':>14}"]
    for label, key in rows:
        row = results[key]
        spread = f"{row['wall_min']:.1f}-{row['wall_max']:.1f}"
        lines.append(f"{label:<{w}}{row['wall']:>9.1f}{spread:>14}{row['wall'] / floor:>10.2f}"
                     f"{row['site_bytes'] / MIB:>14,.0f} MiB{row['site_bytes'] / size:>7.2f}"
                     f"{row.get('peer_bytes', 0) / MIB:>10,.0f} MiB")
    lines.append((f"{'targets (issue 15)':<35}" + "".join(f"{mode.key:<15}" for mode in modes)).rstrip())
    per_mode = {mode.key: ratios(size, floor, results, mode.key) for mode in modes}
    for name, label in TARGET_LABELS.items():
        cells = "".join(f"{per_mode[m.key][name]:<5.2f} {'met' if target_met(name, per_mode[m.key][name]) else 'MISSED':<9}"
                        for m in modes)
        lines.append(f"  {label} {TARGETS[name]:<4} {cells}".rstrip())
    return lines


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/wan.py needs root (ip netns, tc)", file=sys.stderr)
        return 2
    names = [f"Region{chr(ord('A') + i)}" for i in range(args.regions)]
    plan = wan_net.plan(names, tag=f"{os.getpid() % 0xFFFFFF:x}", octet=args.octet,
                        peers=not args.no_peers and args.regions > 1)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        wan_net.setup(plan, args.rate_mbit, args.delay_ms, args.burst_kib)
        wan_net.enter(plan.casc_ns)
        with tempfile.TemporaryDirectory(prefix="bench-wan-") as tmp:
            results, modes, capped = run(args, plan, Path(tmp))
        if results:
            print("\n".join(report(args, results, modes, os.getloadavg(),
                                   time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))))
        print("\n".join(capped))
        return 0
    except (RuntimeError, TimeoutError, subprocess.SubprocessError, OSError) as exc:
        print(f"bench/wan.py failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/wan.py interrupted", file=sys.stderr)
        return 130
    finally:
        wan_net.teardown(plan)


if __name__ == "__main__":
    sys.exit(main())
