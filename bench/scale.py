"""The control plane at scale: a reconciler pass over a large glance, many agents, a restart.

A real glance-sync-coordinator process (SQLite journal) runs against a fake cascading
glance holding ``--images`` images and serving paged listings (bench/fakeglance.py),
with ``--regions`` fake regional glances listing their copies, and ``--agents``
simulated agents that speak the real session protocol and reconnect as
glance-sync-agent does (bench/simagents.py), idle so that every task stays queued
and the figures are the control plane's.  ``sync_strategy = USER``: each image names
one region in ``glance_sync_regions`` (image i: region i mod R), so planning makes
one task per image; ``--regions-per-image K`` names K regions each (i mod R and the K-1
after it), K tasks per image (``--regions-per-image 500``: the issue's image planned for
500 regions).  In one run:

1. the first reconciler pass over a glance the journal has never heard of: its time
   (from its start to its last event journaled), the coordinator's peak RSS, the
   longest loop iteration during it (the coordinator's own log line) and the
   latency of status summaries sent one after another during it (p50 / p99 / max);
2. a restart, with every image's event journaled and none planned yet: the
   coordinator is killed (SIGKILL) and started again; the agents find it gone or are
   told ``disconnect`` and say hello after their jittered backoff.  Prints the time
   until all agents are back, the peak reconnect rate (hellos per second) and the
   hellos per agent (1.00: no storm);
3. the initial planning: from the restart until every image has its task (or, past
   ``--planning-timeout``, how many were planned and at what rate);
4. a pass over the same glance, now known to the journal (or while planning goes on):
   its time, longest iteration and status latency; the coordinator's RSS and the
   journal's size.

Each figure is printed as soon as it is measured.

Usage: ``.venv/bin/python bench/scale.py`` (defaults: the issue's 100,000 images and
500 agents; slow on a busy machine); ``--images 2000 --agents 50`` for a quick run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import control, simagents  # noqa: E402

PASS_STARTED = re.compile(r"reconciler: pass started")
PASS_DONE = re.compile(r"reconciler: pass (\d+) done in ([0-9.]+) s: (\d+) event\(s\) journaled in (\d+) slice\(s\); "
                       r"longest loop iteration during it (\d+) ms")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watch:
    """Status queries one after another, reading the coordinator's log between them."""

    def __init__(self, run: control.Run) -> None:
        self.run = run
        self.log = run.base / "coordinator.log"
        self.offset = 0
        self.rss_peak = 0.0

    def new_lines(self) -> list[str]:
        if not self.log.exists():
            return []
        with self.log.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()

    def query(self) -> tuple[float, dict[str, Any] | None]:
        started = time.perf_counter()
        data = self.run.query(timeout=120)
        took = time.perf_counter() - started
        if self.run.proc is not None and self.run.proc.poll() is None:
            self.rss_peak = max(self.rss_peak, rss_mib(self.run.proc.pid))
        return took, data

    def until(self, pattern: re.Pattern[str], timeout: float, what: str) -> tuple[re.Match[str], list[float]]:
        """Query until a log line matches; the match and the latencies of the queries meanwhile."""
        latencies: list[float] = []
        deadline = time.monotonic() + timeout
        while True:
            for line in self.new_lines():
                found = pattern.search(line)
                if found:
                    return found, latencies
            if time.monotonic() > deadline:
                raise SystemExit(f"timeout waiting for {what}; see {self.log}")
            took, _ = self.query()
            latencies.append(took)


def queued(data: dict[str, Any] | None) -> int:
    """Tasks planned and not done: queued, or handed to one of the (idle) agents."""
    return sum(r["queued"] + r.get("in_flight", 0) for r in (data or {"regions": {}})["regions"].values())


def percentiles(times: list[float]) -> str:
    if not times:
        return "no queries"
    times = sorted(times)
    pick = lambda q: 1000 * times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return f"p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, max {1000 * times[-1]:.1f} ms ({len(times)} queries)"


def agent_stats(run: control.Run) -> dict[str, Any]:
    run.agent_pipe.send("stats")
    return run.agent_pipe.recv()


def start_agents(run: control.Run, agent_regions: list[str], heartbeat: float) -> None:
    import multiprocessing

    run.agent_pipe, child = multiprocessing.Pipe()
    run.agents = multiprocessing.Process(target=simagents.run, daemon=True, args=(
        run.agent_port, agent_regions, 1, heartbeat, False, child))
    run.agents.start()


def wait_welcomed(run: control.Run, count: int, since: float, timeout: float) -> dict[str, Any]:
    """Agent counters once ``count`` agents are welcomed, each after ``since`` (wall clock)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = agent_stats(run)
        if stats["welcomed"] >= count and len([t for t in stats["welcomes"] if t >= since]) >= count:
            return stats
        if time.monotonic() > deadline:
            raise SystemExit(f"only {stats['welcomed']} of {count} agents back after {timeout} s")
        time.sleep(0.2)


def restart(run: control.Run, agents: int, timeout: float) -> dict[str, Any]:
    """Kill the coordinator, start it again, wait for every agent; the reconnect figures."""
    hellos_before = len(agent_stats(run)["hellos"])
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(60)
    killed = time.time()
    run.connect_client()
    run.start()
    answering = time.time()
    stats = wait_welcomed(run, agents, killed, timeout)
    hellos = stats["hellos"][hellos_before:]
    back = max(sorted(t for t in stats["welcomes"] if t >= killed)[:agents])
    per_second = Counter(int(t - killed) for t in hellos)
    return {"start": answering - killed, "back": back - killed, "hellos": len(hellos),
            "peak": max(per_second.values(), default=0), "per_agent": len(hellos) / agents,
            "spread": (max(hellos) - min(hellos)) if hellos else 0.0}


def say(text: str) -> None:
    print(text, flush=True)


def first_pass(args: argparse.Namespace, run: control.Run, watch: Watch) -> None:
    watch.until(PASS_STARTED, args.timeout, "the first reconciler pass")
    found, latencies = watch.until(PASS_DONE, args.timeout, "the end of the first pass")
    again = len(agent_stats(run)["hellos"]) - args.agents
    say(f"first reconciler pass (journal empty): {float(found[2]):.1f} s, {found[3]} events journaled in "
        f"{found[4]} slices; longest loop iteration during it {found[5]} ms; status during it: "
        f"{percentiles(latencies)}; agents that reconnected (took the coordinator for dead) since start: "
        f"{again}; coordinator peak RSS {rss_mib(run.proc.pid, 'VmHWM'):.0f} MiB")


def planning(args: argparse.Namespace, watch: Watch) -> bool:
    """Wait until every image has its task, or ``--planning-timeout``; True when all were planned."""
    began, latencies = time.monotonic(), []
    limit = args.planning_timeout or args.timeout
    while True:
        took, data = watch.query()
        latencies.append(took)
        done, took = queued(data), time.monotonic() - began
        if done >= args.images * args.regions_per_image:
            say(f"initial planning (from the restart until every image has its tasks): {took:.1f} s "
                f"({args.images / max(took, 1e-9):.0f} images/s, {done / max(took, 1e-9):.0f} tasks/s); "
                f"status during it: {percentiles(latencies)}")
            return True
        if took > limit:
            rate = done / max(took, 1e-9)
            total = args.images * args.regions_per_image
            say(f"initial planning (from the restart): {done} of {total} tasks planned in {took:.0f} s "
                f"({rate:.1f} tasks/s, {rate / args.regions_per_image:.1f} images/s; all would take about "
                f"{total / max(rate, 1e-9) / 60:.0f} min); status during it: {percentiles(latencies)}")
            return False
        time.sleep(0.5)


def steady_pass(args: argparse.Namespace, run: control.Run, watch: Watch, base: Path, planned: bool) -> None:
    watch.new_lines()  # a pass that ended during planning is not the steady one
    watch.until(PASS_STARTED, args.timeout, "a pass over the known journal")
    found, latencies = watch.until(PASS_DONE, args.timeout, "the end of that pass")
    what = "the known journal" if planned else "the journal while planning goes on"
    say(f"reconciler pass over {what}: {float(found[2]):.1f} s ({found[3]} events); longest loop "
        f"iteration during it {found[5]} ms; status during it: {percentiles(latencies)}")
    journal = sum(p.stat().st_size for p in base.glob("journal.sqlite*"))
    say(f"coordinator RSS: peak {rss_mib(run.proc.pid, 'VmHWM'):.0f} MiB since the restart, now "
        f"{rss_mib(run.proc.pid):.0f} MiB; journal {journal / 2**20:.1f} MiB ({journal / max(args.images, 1):.0f} "
        f"bytes per image)")
    for line in journal_breakdown(base / "journal.sqlite", args.images * args.regions_per_image):
        say(line)


def journal_breakdown(path: Path, pairs: int) -> list[str]:
    """Bytes per (image, region) of each table and index of the journal (SQLite's dbstat, pages with the WAL's)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        owners = dict(conn.execute("SELECT name, tbl_name FROM sqlite_schema WHERE type IN ('table', 'index')"))
        sizes = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.Error as exc:  # no dbstat in this sqlite3 build
        return [f"journal breakdown: not available ({exc})"]
    finally:
        conn.close()
    per = max(pairs, 1)
    lines = [f"journal per (image, region), {pairs} of them: {sum(n for _, n in sizes) / per:.0f} bytes"]
    for table in ("tasks", "image_regions"):
        parts = [(name, n) for name, n in sizes if owners.get(name) == table]
        lines.append(f"  {table}: {sum(n for _, n in parts) / per:.0f} bytes = "
                     + ", ".join(f"{name} {n / per:.0f}" for name, n in parts))
    rest = sum(n for name, n in sizes if owners.get(name) not in ("tasks", "image_regions"))
    lines.append(f"  the other tables and indexes: {rest / per:.0f} bytes")
    return lines


def bench(args: argparse.Namespace, base: Path) -> None:
    regions = [f"Region{i:03d}" for i in range(args.regions or args.agents)]
    ids = sorted(str(uuid.uuid4()) for _ in range(args.images))
    per_image = min(args.regions_per_image, len(regions))
    args.regions_per_image = per_image
    targets = {image_id: ",".join(regions[(n + k) % len(regions)] for k in range(per_image))
               for n, image_id in enumerate(ids)}
    agent_regions = [regions[n % len(regions)] for n in range(args.agents)]
    per_region = max(4, math.ceil(args.agents / len(regions)))
    options = {"DEFAULT": {"sync_strategy": "USER"},
               "coordinator": {"reconcile_interval": args.reconcile_interval,
                               "max_sessions_per_region": per_region}}
    run = control.Run(base, regions, ids, args.heartbeat, targets, options)
    try:
        started = time.monotonic()
        run.start()
        watch = Watch(run)
        start_agents(run, agent_regions, args.heartbeat)
        wait_welcomed(run, args.agents, 0.0, args.timeout)
        say(f"{args.images} images, {len(regions)} regions ({per_image} per image), {args.agents} agents online in "
            f"{time.monotonic() - started:.1f} s")
        first_pass(args, run, watch)
        s = restart(run, args.agents, args.timeout)
        say(f"restart (SIGKILL, started again): answering after {s['start']:.1f} s; all {args.agents} agents back "
            f"{s['back']:.1f} s after the kill; peak {s['peak']} hellos/s, {s['hellos']} hellos "
            f"({s['per_agent']:.2f} per agent) spread over {s['spread']:.1f} s")
        steady_pass(args, run, watch, base, planning(args, watch))
    finally:
        run.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000, help="images in the fake cascading glance")
    parser.add_argument("--agents", type=int, default=500, help="simulated agents")
    parser.add_argument("--regions", type=int, default=0, help="regions (default: one per agent)")
    parser.add_argument("--regions-per-image", type=int, default=1,
                        help="regions each image names in glance_sync_regions (tasks per image)")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="[coordinator] heartbeat_interval")
    parser.add_argument("--reconcile-interval", type=int, default=10,
                        help="[coordinator] reconcile_interval (the first pass comes this long after start)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds any one phase may take")
    parser.add_argument("--planning-timeout", type=float, default=0.0,
                        help="stop waiting for the initial planning after this many seconds, print its rate, and "
                        "measure the next pass while planning goes on (0: --timeout)")
    parser.add_argument("--dir", help="keep the run's files (log, journal) in this new directory")
    args = parser.parse_args(argv)
    say(f"bench/scale.py on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        bench(args, Path(args.dir or tmp))
    say(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
