"""The coordinator's own ceiling: tasks per second, loop iteration, CPU per task, status latency.

A real glance-sync-coordinator process runs against a fast fake cascading glance
and a fake regional glance (bench/fakeglance.py) and simulated agents that speak
the real session protocol but move no bytes (bench/simagents.py), so the figures
are the control plane's, not a transfer's.  Two runs in one invocation:

1. throughput: ``--regions`` agents (one per region) with ``--capacity`` credits
   each; ``--images`` images get an ``uploaded`` event each; the clock runs from the
   first event to the last region ``synced`` (every registration verified and its
   location PATCHed into the fake cascading glance).  Prints tasks per second, the
   coordinator's CPU-ms per task (its own process, and apart its glance worker
   processes; ``--glance-worker-mode``), its longest loop iteration (its own log line) and
   a timeline: when the events were all acked, the last one planned and the last task
   handed out (the coordinator's log lines), beside the time all were synced.
2. status: a journal seeded with ``--status-tasks`` synced tasks over
   ``--status-agents`` regions, one idle agent online per region; ``--queries``
   summary queries, one after another, as glance-sync-status sends them.  Prints
   p50 / p99 / max latency (decoded, as the tool shows it; and until the reply arrived,
   before the client's own decoding), the coordinator's CPU per query (its CPU during
   the queries less its idle CPU) and the idle coordinator's CPU per second.

Usage: ``.venv/bin/python bench/control.py`` (defaults: a quick run);
``--images 250 --status-tasks 100000 --status-agents 500`` for the issue's targets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402
import zmq  # noqa: E402

from bench import fakeglance, seed, simagents  # noqa: E402
from coordinator import manage  # noqa: E402
from glancesync import protocol  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def settled_children(pid: int, timeout: float = 120.0) -> dict[int, float]:
    """``children_cpu`` once the children stopped using CPU (the glance workers' imports, at start, are
    not the run's)."""
    before, deadline = children_cpu(pid), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = children_cpu(pid)
        if now == before:
            break
        before = now
    return before


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live child of ``pid`` (the coordinator's glance worker processes)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:
            found[int(stat.parent.name)] = cpu_seconds(int(stat.parent.name))
    return found


class Run:
    """One coordinator with its journal, fake glances and configuration in ``base``."""

    def __init__(self, base: Path, regions: list[str], ids: list[str], heartbeat: float,
                 targets: dict[str, str] | None = None, options: dict[str, dict[str, Any]] | None = None) -> None:
        """``targets``: image id -> its one region (glance_sync_regions); ``options``: more config."""
        self.base, self.regions, self.heartbeat = base, regions, heartbeat
        store_dir = base / "store"
        store_dir.mkdir(parents=True)
        parent, child = multiprocessing.Pipe()
        self.glance = multiprocessing.Process(target=fakeglance.serve, args=(ids, str(store_dir), child, targets),
                                              daemon=True)
        self.glance.start()
        cascading_port, regional_port = parent.recv()
        self.glance_urls = {"cascading": f"http://127.0.0.1:{cascading_port}",
                            "regional": f"http://127.0.0.1:{regional_port}"}
        store = {
            "cascading": {"store": {"host": "127.0.0.1", "user": "glance", "private_key_file": "/nonexistent",
                                    "known_hosts_file": "/nonexistent", "store_dir": str(store_dir)}},
            "regions": {r: {"glance": {"url": f"http://127.0.0.1:{regional_port}/region/{r}"}, "work_dir": str(base)}
                        for r in regions},
        }
        (base / "glance_store.yaml").write_text(yaml.safe_dump(store))
        self.db_url = f"sqlite:///{base / 'journal.sqlite'}"
        self.event_port, self.agent_port = free_port(), free_port()
        conf = {
            "DEFAULT": {"sync_server_port": self.event_port, "glance_store_config": base / "glance_store.yaml",
                        "cascading_endpoint_url": f"http://127.0.0.1:{cascading_port}",
                        "log_file": base / "coordinator.log"},
            "coordinator": {"agent_port": self.agent_port, "heartbeat_interval": heartbeat,
                            "reconcile_interval": 0, "max_sessions_per_region": 4},
            "database": {"connection": self.db_url},
        }
        for section, values in (options or {}).items():
            conf.setdefault(section, {}).update(values)
        self.conf = base / "coordinator.conf"
        self.conf.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
                                     for name, opts in conf.items()))
        manage.db_sync(self.db_url)
        self.proc: subprocess.Popen | None = None
        self.ctx = zmq.Context()
        self.client: zmq.Socket | None = None
        self.connect_client()
        self.agents: multiprocessing.Process | None = None
        self.agent_pipe: Any = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        profile = ["-m", "cProfile", "-o", str(self.base / "coordinator.prof")] if os.environ.get("BENCH_PROFILE") else []
        # bench/sqlcount.py runs the coordinator's main and counts its SQL statements.
        self.proc = subprocess.Popen([sys.executable, *profile, str(ROOT / "bench" / "sqlcount.py"),
                                      str(self.base / "sql.json"), "--config-file", str(self.conf)],
                                     env=env, cwd=self.base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while self.query(timeout=0.5) is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"coordinator did not start; see {self.base / 'coordinator.log'}")

    def start_agents(self, capacity: int, work: bool) -> None:
        self.agent_pipe, child = multiprocessing.Pipe()
        self.agents = multiprocessing.Process(target=simagents.run, daemon=True, args=(
            self.agent_port, self.regions, capacity, self.heartbeat, work, child))
        self.agents.start()

    def connect_client(self) -> None:
        """A fresh status socket (after a restart: the queries the old process took are lost)."""
        if getattr(self, "client", None) is not None:
            self.client.close(linger=0)
        self.client = self.ctx.socket(zmq.DEALER)
        self.client.setsockopt(zmq.LINGER, 0)
        self.client.connect(f"tcp://127.0.0.1:{self.event_port}")
        self.outstanding = 0
        self.arrived = 0.0

    def query(self, view: str = "summary", timeout: float = 30.0) -> dict[str, Any] | None:
        # Replies to earlier queries that timed out (while the coordinator started) come first:
        # take them off, or every later latency would be measured against a stale reply.
        while self.outstanding and self.client.poll(int(timeout * 1000)):
            self.client.recv()
            self.outstanding -= 1
        self.client.send(protocol.encode("status_query", {"view": view}))
        self.outstanding += 1
        if not self.client.poll(int(timeout * 1000)):
            return None
        self.arrived = time.perf_counter()  # the reply is here; decoding it is the client's own cost
        msg = protocol.decode(self.client.recv())
        self.outstanding -= 1
        return msg.body["data"] if msg.type == "status_reply" else None

    def online(self) -> int:
        data = self.query() or {"regions": {}}
        return sum(a["online"] for r in data["regions"].values() for a in r["agents"])

    def wait_online(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while self.online() < len(self.regions):
            if time.monotonic() > deadline:
                raise SystemExit("agents did not all come online")
            time.sleep(0.2)

    def glance_requests(self) -> dict[str, int]:
        """Requests the fake glances served, by server and kind (``cascading get``...)."""
        served = {}
        for name, url in self.glance_urls.items():
            with urllib.request.urlopen(f"{url}/bench/requests", timeout=10) as reply:  # noqa: S310
                served.update({f"{name} {kind}": n for kind, n in json.loads(reply.read()).items()})
        return served

    def stop(self) -> dict[str, Any]:
        counts: dict[str, Any] = {"glance": self.glance_requests()}
        if self.agents is not None:
            self.agent_pipe.send("stop")
            counts.update(self.agent_pipe.recv())
            self.agents.join(10)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.glance.terminate()
        self.ctx.destroy(linger=0)
        log = (self.base / "coordinator.log").read_text(errors="replace")
        found = re.findall(r"longest loop iteration: ([0-9.]+) ms", log)
        counts["longest_ms"] = float(found[-1]) if found else None
        counts["slow_iterations"] = len(re.findall(r"a loop iteration took", log))
        sql = self.base / "sql.json"
        counts["sql"] = json.loads(sql.read_text()) if sql.exists() else {}
        return counts


def send_events(run: Run, ids: list[str]) -> None:
    sock = run.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{run.event_port}")
    for image_id in ids:
        sock.send(protocol.encode("event", {"event_id": uuid.uuid4().hex, "kind": "uploaded", "image_id": image_id}))
    for _ in ids:
        if not sock.poll(120_000):
            raise SystemExit("events not acked")
        sock.recv()
    sock.close()


def stages(log: Path, started: float) -> dict[str, float | None]:
    """Seconds from the first event sent to the last event planned and the last task handed out,
    read from the coordinator's log (its INFO lines; local wall-clock times to the millisecond)."""
    last: dict[str, float | None] = {"planned": None, "handed out": None}
    patterns = {"planned": re.compile(r"INFO coordinator\.eventdesk \[.*\] event \S+ \(.*\): \d+ tasks"),
                "handed out": re.compile(r"INFO coordinator\.tasks \[.*\] agent \S+ given \d+ task")}
    for line in log.read_text(errors="replace").splitlines():
        for name, pattern in patterns.items():
            if pattern.search(line):
                try:
                    at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
                except ValueError:
                    continue
                last[name] = at - started
    return last


def synced(data: dict[str, Any] | None) -> int:
    return sum(r["synced"] for r in (data or {"regions": {}})["regions"].values())


def throughput(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    regions = [f"Region{i:03d}" for i in range(args.regions)]
    ids = [str(uuid.uuid4()) for _ in range(args.images)]
    run = Run(base, regions, ids, args.heartbeat,
              options={"coordinator": {"glance_worker_mode": args.glance_worker_mode,
                                       "glance_workers": args.glance_workers}})
    try:
        run.start()
        run.start_agents(args.capacity, work=True)
        run.wait_online()
        total = len(ids) * len(regions)
        workers0 = settled_children(run.proc.pid)
        cpu0, t0, wall0 = cpu_seconds(run.proc.pid), time.monotonic(), time.time()
        send_events(run, ids)
        acked = time.monotonic() - t0
        while synced(run.query()) < total:
            if time.monotonic() - t0 > args.timeout:
                print(f"  timeout: {synced(run.query())} of {total} synced after {args.timeout} s")
                break
            time.sleep(0.2)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(run.proc.pid) - cpu0
        workers = sum(c - workers0.get(pid, 0.0) for pid, c in children_cpu(run.proc.pid).items())
        done = synced(run.query())
    finally:
        counts = run.stop()
    counts["stages"] = {"events acked": acked, **stages(base / "coordinator.log", wall0)}
    sql = counts.pop("sql")
    counts["glance_per_task"] = {kind: n / max(done, 1) for kind, n in sorted(counts.pop("glance").items())}
    per_task = {kind: n / max(done, 1) for kind, n in sorted(sql.items(), key=lambda kv: -kv[1])}
    return {"tasks": done, "elapsed": elapsed, "per_s": done / elapsed, "cpu_ms_per_task": 1000 * cpu / max(done, 1),
            "worker_cpu_ms_per_task": 1000 * workers / max(done, 1),
            "sql_per_task": per_task, **counts}


def status_latency(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    regions = [f"Region{i:03d}" for i in range(args.status_agents)]
    run = Run(base, regions, [], args.heartbeat)
    try:
        seed.synced_tasks(run.db_url, regions, args.status_tasks)
        run.start()
        run.start_agents(1, work=False)
        run.wait_online()
        times, arrived = [], []
        cpu_q, t_q = cpu_seconds(run.proc.pid), time.monotonic()
        for _ in range(args.queries):
            t = time.perf_counter()
            if run.query() is None:
                raise SystemExit("status query unanswered")
            times.append(time.perf_counter() - t)
            arrived.append(run.arrived - t)
        cpu0, t0 = cpu_seconds(run.proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle = (cpu_seconds(run.proc.pid) - cpu0) / (time.monotonic() - t0)
        # The coordinator's CPU for the queries: its CPU meanwhile less what it spends idle.
        per_query = (cpu0 - cpu_q - idle * (t0 - t_q)) / args.queries
    finally:
        counts = run.stop()
    times.sort()
    arrived.sort()
    pick = lambda q, ts=times: 1000 * ts[min(len(ts) - 1, int(q * len(ts)))]  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": 1000 * times[-1], "idle_cpu": idle,
            "arrived_p50": pick(0.5, arrived), "arrived_p99": pick(0.99, arrived), "arrived_max": 1000 * arrived[-1],
            "cpu_ms_per_query": 1000 * per_query, **counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regions", type=int, default=8, help="agents (one per region) in the throughput run")
    parser.add_argument("--images", type=int, default=100, help="images in the throughput run (tasks = images x regions)")
    parser.add_argument("--capacity", type=int, default=32, help="credits of each simulated agent")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the throughput run may take")
    parser.add_argument("--status-tasks", type=int, default=10000, help="synced tasks journaled for the status run")
    parser.add_argument("--status-agents", type=int, default=100, help="idle agents online in the status run")
    parser.add_argument("--queries", type=int, default=200, help="summary queries in the status run")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="how long the idle CPU is measured")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="[coordinator] heartbeat_interval")
    parser.add_argument("--glance-worker-mode", choices=("processes", "threads"), default="processes",
                        help="[coordinator] glance_worker_mode of the throughput run")
    parser.add_argument("--glance-workers", type=int, default=4, help="[coordinator] glance_workers of the throughput run")
    parser.add_argument("--skip", choices=("throughput", "status"), help="leave one run out")
    parser.add_argument("--dir", help="keep the runs' files (logs, journals) in this new directory")
    args = parser.parse_args(argv)
    print(f"bench/control.py on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        tmp = args.dir or tmp
        if args.skip != "throughput":
            r = throughput(args, Path(tmp) / "throughput")
            print(f"throughput: {r['tasks']} tasks ({args.images} images x {args.regions} agents, capacity "
                  f"{args.capacity}, glance_worker_mode {args.glance_worker_mode} x {args.glance_workers}) synced in {r['elapsed']:.1f} s: "
                  f"{r['per_s']:.0f} tasks/s; coordinator {r['cpu_ms_per_task']:.2f} CPU-ms per task (its glance "
                  f"worker processes {r['worker_cpu_ms_per_task']:.2f}); longest loop iteration {r['longest_ms']} ms "
                  f"({r['slow_iterations']} over heartbeat_interval); agents saw {r.get('tasks')} task messages")
            print("  timeline (s from the first event): " + ", ".join(
                f"last {name} {'-' if at is None else f'{at:.2f}'}" for name, at in r["stages"].items())
                  + f", all synced {r['elapsed']:.2f}")
            print("  glance requests per task: " + ", ".join(
                f"{kind} {n:.2f}" for kind, n in r["glance_per_task"].items()))
            print("  SQL statements per task (whole run): " + ", ".join(
                f"{kind} {n:.1f}" for kind, n in r["sql_per_task"].items()))
        if args.skip != "status":
            r = status_latency(args, Path(tmp) / "status")
            print(f"status summary with {args.status_tasks} tasks journaled and {args.status_agents} agents online: "
                  f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.2f} ms over {args.queries} queries; "
                  f"idle coordinator {r['idle_cpu']:.3f} CPU-s per s; longest loop iteration {r['longest_ms']} ms")
            print(f"  until the reply arrived (before the client decodes it): p50 {r['arrived_p50']:.2f} ms, "
                  f"p99 {r['arrived_p99']:.2f} ms, max {r['arrived_max']:.2f} ms; coordinator CPU per query "
                  f"{r['cpu_ms_per_query']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
