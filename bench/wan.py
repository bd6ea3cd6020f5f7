"""One image to every region over rate-limited WAN links: the project beside the naive ways, in one run.

Each site runs in its own network namespace (bench/wan_net.py: veth links shaped by
``tbf``, loopback-range addresses only).  The cascading site holds the cascading
glance-api (with the ``glancesync`` filter and ``cascaded://`` store), the chrooted
sshd serving its store, the coordinator and this process; each region holds its own
glance-api and agent, started inside the region's namespace.  One random image of
``--size-mib`` is then sent to every region four ways, one after the other:

- ``project``: uploaded to the cascading glance, timed from the end of the upload
  until glance-sync-status shows every region ``synced``;
- ``link floor`` (S/link): the image's size over one link's rate, what a region
  cannot beat, and what all regions together reach when the links run in parallel;
- ``scp pulls``: OpenSSH ``scp`` of the store file from each region, in parallel;
- ``serial relay``: glanceclient download from the cascading glance, then one
  upload per region, one after the other (run from the cascading site).

The three are run ``--rounds`` times (default 3), interleaved (project, scp,
relay, then again), each round with a new image.  For each it prints the median
wall time (and the range) and the bytes the cascading site sent over its links
(veth ``tx_bytes`` before and after), then the ratios the issue sets as targets,
on the medians.  Then, unless ``--cap-mbit 0``, a capped run (bench/wan_cap.py):
each region's agent restarted with ``[agent] max_bandwidth``, ``--cap-copies``
images per region, and the rate each link carried beside the cap.  Namespaces
and processes are removed on exit, Ctrl-C and failure.

Usage (root): ``.venv/bin/python bench/wan.py [--size-mib 1024] [--rate-mbit 400] [--rounds 3]
[--cap-mbit 80] [--cap-copies 2]``
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

from bench import wan_cap, wan_net  # noqa: E402

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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three methods; medians "
                        "are reported (default 3; 0: only the capped run)")
    parser.add_argument("--cap-mbit", type=float, default=80.0, help="max_bandwidth of each region's agent in the "
                        "capped run, Mbit/s; 0 skips that run (default 80)")
    parser.add_argument("--cap-copies", type=int, default=2, help="images per region in the capped run, copied "
                        "side by side under the one cap (default 2)")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or not 1 <= args.regions <= 26 or args.rate_mbit <= 0 or args.delay_ms < 0:
        parser.error("--size-mib >= 1, --regions 1..26, --rate-mbit > 0, --delay-ms >= 0")
    if args.rounds < 0 or args.cap_mbit < 0 or args.cap_copies < 1 or not (args.rounds or args.cap_mbit):
        parser.error("--rounds >= 0, --cap-mbit >= 0 (not both 0), --cap-copies >= 1")
    return args


def link_floor(size_bytes: int, rate_mbit: float) -> float:
    """Seconds one link needs for ``size_bytes`` (S/link)."""
    return size_bytes * 8 / (rate_mbit * 1e6)


def ratios(size_bytes: int, floor: float, results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The issue's three figures: project/floor, relay/project (speed-up) and site bytes/size."""
    project = results["project"]
    return {
        "project_vs_floor": project["wall"] / floor,
        "relay_vs_project": results["relay"]["wall"] / project["wall"],
        "site_bytes_vs_size": project["site_bytes"] / size_bytes,
    }


def target_met(name: str, value: float) -> bool:
    """relay_vs_project is a speed-up (bigger is better); the others are costs."""
    return value >= TARGETS[name] if name == "relay_vs_project" else value <= TARGETS[name]


def _measured(plan: wan_net.Plan, run: Any) -> dict[str, float]:
    started = time.monotonic()  # the clock first: reading the counters takes a few processes
    before = wan_net.site_tx_bytes(plan)
    run()
    return {"wall": time.monotonic() - started, "site_bytes": wan_net.site_tx_bytes(plan) - before}


def one_round(args: argparse.Namespace, plan: wan_net.Plan, base: Path, topo: Any) -> dict[str, dict[str, float]]:
    """project, scp pulls and serial relay of one new image."""
    results: dict[str, dict[str, float]] = {}
    image_id, upload = topo.upload(args.size_mib * MIB)
    results["project"] = _measured(plan, lambda: topo.wait_synced(image_id, upload, args.timeout))
    source = topo.store_file(image_id)
    results["scp"] = _measured(plan, lambda: topo.scp_pulls(source, args.timeout))
    results["relay"] = _measured(plan, lambda: topo.serial_relay(image_id, base / "relay.img"))
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


def run(args: argparse.Namespace, plan: wan_net.Plan, base: Path) -> tuple[dict[str, dict[str, float]], list[str]]:
    from bench import wan_sites  # after enter(): the harness picks ports in this namespace

    with wan_sites.WanTopology(base / "topo", plan) as topo:
        topo.start_services()
        rounds = []
        for number in range(1, args.rounds + 1):
            rounds.append(one_round(args, plan, base, topo))
            print(f"round {number}: " + ", ".join(f"{k} {v['wall']:.1f} s" for k, v in rounds[-1].items()),
                  flush=True)
        capped: list[str] = []
        if args.cap_mbit > 0:
            result = wan_cap.capped_run(topo, plan, args.size_mib * MIB, args.cap_mbit, args.cap_copies,
                                        args.timeout)
            capped = wan_cap.report(result, args.cap_mbit)
    return medians(rounds), capped


def report(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> None:
    size = args.size_mib * MIB
    floor = link_floor(size, args.rate_mbit)
    load = os.getloadavg()
    print(f"\n{args.size_mib} MiB image to {args.regions} regions, links {args.rate_mbit:g} Mbit/s"
          f"{f' + {args.delay_ms:g} ms' if args.delay_ms else ''}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{platform.node()}, {os.cpu_count()} CPUs, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"medians of {args.rounds} interleaved round(s)")
    print(f"{'method':<34}{'wall s':>9}{'range':>14}{'x S/link':>10}{'sent by cascading site':>24}{'x S':>7}")
    rows = [("project (upload end -> all synced)", "project"), ("scp pulls, parallel", "scp"),
            ("serial relay (download, uploads)", "relay")]
    print(f"{'link floor S/link':<34}{floor:>9.1f}{'-':>14}{1:>10.2f}{'-':>24}{'-':>7}")
    for label, key in rows:
        row = results[key]
        spread = f"{row['wall_min']:.1f}-{row['wall_max']:.1f}"
        print(f"{label:<34}{row['wall']:>9.1f}{spread:>14}{row['wall'] / floor:>10.2f}"
              f"{row['site_bytes'] / MIB:>20,.0f} MiB{row['site_bytes'] / size:>7.2f}")
    print("targets (issue 15):")
    labels = {"project_vs_floor": "project / (S/link)     <=", "relay_vs_project": "relay / project        >=",
              "site_bytes_vs_size": "project site bytes / S <="}
    for name, value in ratios(size, floor, results).items():
        print(f"  {labels[name]} {TARGETS[name]:<4} {value:6.2f}  {'met' if target_met(name, value) else 'MISSED'}")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/wan.py needs root (ip netns, tc)", file=sys.stderr)
        return 2
    names = [f"Region{chr(ord('A') + i)}" for i in range(args.regions)]
    plan = wan_net.plan(names, tag=f"{os.getpid() % 0xFFFFFF:x}", octet=args.octet)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        wan_net.setup(plan, args.rate_mbit, args.delay_ms, args.burst_kib)
        wan_net.enter(plan.casc_ns)
        with tempfile.TemporaryDirectory(prefix="bench-wan-") as tmp:
            results, capped = run(args, plan, Path(tmp))
        if results:
            report(args, results)
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
