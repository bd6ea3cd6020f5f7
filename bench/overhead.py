"""Control-plane overhead: from an image's event to its location registered, less the agent's own work.

What a user waits for beyond the copy itself.  A real glance-sync-coordinator process
and simulated agents that speak the real session protocol (bench/simagents.py); images
are sent one at a time (the next event only once every location of the one before is
registered, after ``--gap`` seconds), each to ``--per-image`` regions, so the figure is
latency, not queueing.  For each (image, region)::

    overhead = (event sent -> location of that region registered in the cascading glance)
               - (task message reached the simulated agent -> its ``done`` sent)

Two back ends, one after the other in one run:

a. fake glances (bench/fakeglance.py): the fake cascading glance keeps the wall-clock
   time each PATCH added a location (``/bench/patched``), taken before it answers the PATCH.
b. real glance-api processes (PyPI glance under gunicorn, as tests/harness/glance.py
   starts them): one cascading with the ``cascaded://`` store driver and one per region.
   The bench uploads each image to the cascading glance first (``--image-kib`` of bytes
   made from its id); the simulated agent's work is to create the image in its region's
   glance with the same id and upload the same bytes, so size, checksum and os_hash_value
   match what the coordinator reads back before it registers.  The bench waits on the
   coordinator's log line ``image <id>: registered location(s)`` (read from its file,
   stamped to the millisecond; it comes after the PATCH and glanceclient's read after
   it); the time of registration is glance's own: the ``created_at`` of the location's
   row in the cascading glance's database (UTC, microseconds, written inside the PATCH),
   read once at the end, as is the cascading image, to check each location is there.

Event, task, done and registration times are all wall-clock times of one machine.
The first ``--warmup`` images of each back end are left out (worker processes and
clients start then).  Prints p50 / p99 / max of the overhead beside the 100 ms target,
and where it went: event -> task at the agent, done -> registered.

Usage: ``.venv/bin/python bench/overhead.py`` (defaults: 40 images per back end);
``--skip real`` or ``--skip fake`` for one back end.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import io
import json
import multiprocessing
import os
import platform
import re
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402
import zmq  # noqa: E402

from bench import control, simagents  # noqa: E402
from coordinator import manage  # noqa: E402
from glancesync import protocol  # noqa: E402

TARGET_MS = 100.0
# The coordinator's line once a location is in the cascading glance (coordinator/glancejobs.py).
REGISTERED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) .*image (\S+): registered locations? (.*)$")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def payload(image_id: str, size: int) -> bytes:
    """The bytes of a bench image, from its id: the bench and the simulated agent make the same."""
    return hashlib.shake_256(image_id.encode()).digest(size)


def start_agents(run: control.Run, capacity: int, worker: Callable[[dict[str, Any]], None] | None) -> None:
    """``run``'s simulated agents (one per region), with ``worker`` as their own work."""
    run.agent_pipe, child = multiprocessing.Pipe()
    run.agents = multiprocessing.Process(target=simagents.run, daemon=True, args=(
        run.agent_port, run.regions, capacity, run.heartbeat, True, child, worker))
    run.agents.start()


def agent_times(run: control.Run) -> dict[str, tuple[float, float]]:
    run.agent_pipe.send("stats")
    return run.agent_pipe.recv()["worked"]


class Sender:
    """Sends one ``uploaded`` event at a time and waits for its ack."""

    def __init__(self, run: control.Run) -> None:
        self.sock = run.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{run.event_port}")

    def send(self, image_id: str) -> float:
        sent = time.time()
        self.sock.send(protocol.encode("event", {"event_id": uuid.uuid4().hex, "kind": "uploaded",
                                                 "image_id": image_id}))
        if not self.sock.poll(60_000):
            raise SystemExit("event not acked")
        self.sock.recv()
        return sent


def measure(run: control.Run, ids: list[str], targets: dict[str, list[str]], args: argparse.Namespace,
            registered: Callable[[], dict[str, float]], before: Callable[[str], None] = lambda _i: None,
            stamped: Callable[[], dict[str, float]] | None = None) -> dict[str, list[float]]:
    """Send the events of ``ids`` one at a time; the overhead and its parts in ms, per (image, region).

    ``registered()``: location url -> the time it was registered, so far (what the bench
    waits on); ``stamped()``: the same read once at the end, when it is more exact (the
    real glance's own record of the location); ``before(id)`` runs before each event (the
    real back end uploads the image then).
    """
    sender, sent = Sender(run), {}
    for image_id in ids:
        before(image_id)
        urls = [protocol.cascaded_url(region, image_id) for region in targets[image_id]]
        sent[image_id] = sender.send(image_id)
        deadline = time.monotonic() + args.timeout
        while not all(url in registered() for url in urls):
            if time.monotonic() > deadline:
                raise SystemExit(f"image {image_id} not registered in {targets[image_id]} after {args.timeout} s; "
                                 f"see {run.base / 'coordinator.log'}")
            time.sleep(0.05)  # how often the bench looks, not the resolution of the times it reads
        time.sleep(args.gap)
    sender.sock.close()
    worked, seen = agent_times(run), registered()
    at = stamped() if stamped is not None else seen
    out: dict[str, list[float]] = {"overhead": [], "to_agent": [], "to_registered": [], "agent": [], "seen": []}
    for image_id in ids[args.warmup:]:
        for region in targets[image_id]:
            arrived, done = worked[f"{image_id}/{region}"]
            end = at[protocol.cascaded_url(region, image_id)]
            out["seen"].append(1000 * (seen[protocol.cascaded_url(region, image_id)] - end))
            out["overhead"].append(1000 * ((end - sent[image_id]) - (done - arrived)))
            out["to_agent"].append(1000 * (arrived - sent[image_id]))
            out["to_registered"].append(1000 * (end - done))
            out["agent"].append(1000 * (done - arrived))
    return out


def spread(regions: list[str], count: int, per_image: int) -> tuple[list[str], dict[str, list[str]]]:
    """``count`` image ids, each to ``per_image`` of ``regions`` (in turn)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    return ids, {image_id: [regions[(n + k) % len(regions)] for k in range(per_image)]
                 for n, image_id in enumerate(ids)}


def options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {"DEFAULT": {"sync_strategy": "USER"},
            "coordinator": {"glance_worker_mode": args.glance_worker_mode, "glance_workers": args.glance_workers}}


def fake_backend(args: argparse.Namespace, base: Path) -> dict[str, list[float]]:
    regions = [f"Region{i:02d}" for i in range(args.regions)]
    ids, targets = spread(regions, args.images, args.per_image)
    run = control.Run(base, regions, ids, args.heartbeat, {i: ",".join(r) for i, r in targets.items()},
                      options=options(args))

    def registered() -> dict[str, float]:
        with urllib.request.urlopen(f"{run.glance_urls['cascading']}/bench/patched", timeout=10) as reply:  # noqa: S310
            return json.loads(reply.read())

    try:
        run.start()
        start_agents(run, args.capacity, None)
        run.wait_online()
        out = measure(run, ids, targets, args, registered)
        (base / "samples.json").write_text(json.dumps(out))
        return out
    finally:
        run.stop()


# -- real glance-api processes ----------------------------------------------------------------


def endpoint(url: str) -> dict[str, Any]:
    """A glance_store.yaml ``glance:`` entry trusting the admin identity headers (no keystone)."""
    from tests.harness.glance import IDENTITY_HEADERS

    return {"url": url, "auth": {"auth_type": "none"}, "headers": dict(IDENTITY_HEADERS)}


_clients: dict[str, Any] = {}


def make_regional(urls: dict[str, str], size: int, body: dict[str, Any]) -> None:
    """The simulated agent's work: the image in its region's glance, same id, same bytes."""
    from tests.harness.glance import admin_client

    region, image = body["region"], body["image"]
    client = _clients.get(region) or _clients.setdefault(region, admin_client(urls[region]))
    client.images.create(id=image["id"], name=image.get("name"), disk_format=image["disk_format"],
                         container_format=image["container_format"])
    client.images.upload(image["id"], io.BytesIO(payload(image["id"], size)))


class RealRun(control.Run):
    """control.Run's coordinator, journal and agents against real glance-api processes."""

    def __init__(self, base: Path, regions: list[str], heartbeat: float, extra: dict[str, dict[str, Any]]) -> None:
        from tests.harness.glance import GlanceServer
        from tests.harness.siteconfig import SERVICE_IDENTITY_HEADERS

        self.base, self.regions, self.heartbeat = base, regions, heartbeat
        template = base / "glance-template"
        self.servers = {r: GlanceServer(r, base / r, template_dir=template) for r in regions}
        driver = base / "driver-store.yaml"
        driver.parent.mkdir(parents=True, exist_ok=True)
        driver.write_text(yaml.safe_dump({"regions": {r: {"glance": endpoint(s.url)} for r, s in self.servers.items()}}))
        self.cascading = GlanceServer("cascading", base / "cascading", template_dir=template, cascaded_store=True,
                                      store_config=driver)
        self.started: list[Any] = []
        for server in (*self.servers.values(), self.cascading):
            self.started.append(server.start())
        store = {"cascading": {"glance": endpoint(self.cascading.url),
                               "store": {"scheme": "file", "store_dir": str(self.cascading.data_dir)}},
                 "regions": {r: {"glance": endpoint(s.url), "work_dir": str(base)} for r, s in self.servers.items()}}
        (base / "glance_store.yaml").write_text(yaml.safe_dump(store))
        self.db_url = f"sqlite:///{base / 'journal.sqlite'}"
        self.event_port, self.agent_port = control.free_port(), control.free_port()
        conf: dict[str, dict[str, Any]] = {
            "DEFAULT": {"sync_server_port": self.event_port, "glance_store_config": base / "glance_store.yaml",
                        "cascading_endpoint_url": self.cascading.url, "log_file": base / "coordinator.log"},
            "coordinator": {"agent_port": self.agent_port, "heartbeat_interval": heartbeat, "reconcile_interval": 0},
            "cascading_glance": {"auth_type": "none",
                                 "identity_headers": ",".join(f"{k}:{v}" for k, v in SERVICE_IDENTITY_HEADERS.items())},
            "database": {"connection": self.db_url},
        }
        for section, values in extra.items():
            conf.setdefault(section, {}).update(values)
        self.conf = base / "coordinator.conf"
        self.conf.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
                                     for name, opts in conf.items()))
        manage.db_sync(self.db_url)
        self.proc = None
        self.ctx = zmq.Context()
        self.client = None
        self.connect_client()
        self.agents = None
        self.agent_pipe = None
        self._log_at = 0
        self._registered: dict[str, float] = {}

    def registered(self) -> dict[str, float]:
        """Location url -> the time of its coordinator log line (1 ms resolution), read on from last time."""
        with open(self.base / "coordinator.log", "rb") as log:
            log.seek(self._log_at)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._log_at += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            found = REGISTERED.match(line)
            if found:
                at = time.mktime(time.strptime(found[1], "%Y-%m-%d %H:%M:%S")) + int(found[2]) / 1000
                for url in found[4].split(", "):
                    self._registered[url.strip()] = at
        return self._registered

    def stamped(self) -> dict[str, float]:
        """Location url -> when the cascading glance wrote it: its image_locations.created_at (UTC, 1 us),
        set in the PATCH's transaction, kept when a later PATCH rewrites the set."""
        db = sqlite3.connect(f"file:{self.cascading.db_path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT value, created_at FROM image_locations "
                              "WHERE deleted = 0 AND value LIKE 'cascaded://%'").fetchall()
        finally:
            db.close()
        return {url: datetime.datetime.fromisoformat(created).replace(tzinfo=datetime.UTC).timestamp()
                for url, created in rows}

    def round_trips(self, image_id: str, count: int = 20) -> list[float]:
        """Milliseconds of one GET of an image from the cascading glance, ``count`` times: what each of
        the coordinator's requests on the path costs at the least here."""
        client, times = self.cascading.client(), []
        client.images.get(image_id)
        for _ in range(count):
            start = time.perf_counter()
            client.images.get(image_id)
            times.append(1000 * (time.perf_counter() - start))
        return times

    def upload(self, image_id: str, regions: list[str], size: int) -> None:
        client = self.cascading.client()
        client.images.create(id=image_id, name=f"bench-{image_id[:8]}", disk_format="raw", container_format="bare",
                             glance_sync_regions=",".join(regions))
        client.images.upload(image_id, io.BytesIO(payload(image_id, size)))

    def check(self, image_id: str, regions: list[str]) -> None:
        urls = {loc["url"] for loc in self.cascading.client().images.get(image_id)["locations"]}
        missing = {protocol.cascaded_url(r, image_id) for r in regions} - urls
        if missing:
            raise SystemExit(f"logged as registered but not in the cascading image: {sorted(missing)}")

    def stop(self) -> dict[str, Any]:
        if self.agents is not None:
            self.agent_pipe.send("stop")
            self.agent_pipe.recv()
            self.agents.join(10)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        for server in self.started:
            server.stop()
        self.ctx.destroy(linger=0)
        return {}


def real_backend(args: argparse.Namespace, base: Path) -> dict[str, list[float]]:
    regions = [f"Region{i:02d}" for i in range(args.real_regions)]
    ids, targets = spread(regions, args.real_images, min(args.per_image, len(regions)))
    size = args.image_kib * 1024
    run = RealRun(base, regions, args.heartbeat, options(args))
    try:
        run.start()
        start_agents(run, args.capacity, functools.partial(make_regional, {r: s.url for r, s in run.servers.items()},
                                                           size))
        run.wait_online()
        out = measure(run, ids, targets, args, run.registered,
                      before=lambda image_id: run.upload(image_id, targets[image_id], size), stamped=run.stamped)
        for image_id in ids:
            run.check(image_id, targets[image_id])
        out["glance_get"] = run.round_trips(ids[-1])
        (base / "samples.json").write_text(json.dumps(out))
        return out
    finally:
        run.stop()


def report(name: str, r: dict[str, list[float]]) -> None:
    o = r["overhead"]
    verdict = "meets" if percentile(o, 0.5) < TARGET_MS else "misses"
    print(f"{name}: overhead p50 {percentile(o, 0.5):.1f} ms, p99 {percentile(o, 0.99):.1f} ms, max {max(o):.1f} ms "
          f"over {len(o)} (image, region) pairs; target p50 < {TARGET_MS:.0f} ms: {verdict}")
    print("  event -> task at the agent p50 {:.1f} ms, p99 {:.1f}; done -> registered p50 {:.1f} ms, p99 {:.1f}; "
          "the agent's own work p50 {:.1f} ms (left out)".format(
              percentile(r["to_agent"], 0.5), percentile(r["to_agent"], 0.99), percentile(r["to_registered"], 0.5),
              percentile(r["to_registered"], 0.99), percentile(r["agent"], 0.5)))
    if "glance_get" in r:
        print(f"  one GET of an image from the cascading glance meanwhile: p50 {percentile(r['glance_get'], 0.5):.1f} ms "
              "(the path makes four glance requests in turn: fetch, regional listing, cascading read, PATCH)")
    if any(r["seen"]):
        print(f"  the coordinator's log line came {percentile(r['seen'], 0.5):.1f} ms after glance wrote the location "
              f"(p50; p99 {percentile(r['seen'], 0.99):.1f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regions", type=int, default=8, help="regions (one simulated agent each), fake back end")
    parser.add_argument("--images", type=int, default=40, help="images sent one at a time, fake back end")
    parser.add_argument("--real-regions", type=int, default=2, help="regional glance-apis of the real back end")
    parser.add_argument("--real-images", type=int, default=40, help="images sent one at a time, real back end")
    parser.add_argument("--per-image", type=int, default=3, help="regions each image goes to (glance_sync_regions)")
    parser.add_argument("--image-kib", type=int, default=64, help="size of each real image")
    parser.add_argument("--warmup", type=int, default=3, help="first images of each back end left out")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between one image registered and the next event")
    parser.add_argument("--capacity", type=int, default=4, help="credits of each simulated agent")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="[coordinator] heartbeat_interval")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one image may take")
    parser.add_argument("--glance-worker-mode", choices=("processes", "threads"), default="processes",
                        help="[coordinator] glance_worker_mode")
    parser.add_argument("--glance-workers", type=int, default=4, help="[coordinator] glance_workers")
    parser.add_argument("--skip", choices=("fake", "real"), help="leave one back end out")
    parser.add_argument("--dir", help="keep the runs' files (logs, journals) in this new directory")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(f"bench/overhead.py on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"one image at a time, {args.gap} s apart, glance_worker_mode {args.glance_worker_mode} x {args.glance_workers}")
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        tmp = args.dir or tmp
        if args.skip != "fake":
            report(f"fake glances ({args.regions} regions, each image to {args.per_image}; registration time: "
                   "the fake's PATCH)", fake_backend(args, Path(tmp) / "fake"))
        if args.skip != "real":
            report(f"real glance-apis (cascading + {args.real_regions} regional, each image to "
                   f"{min(args.per_image, args.real_regions)}, {args.image_kib} KiB; registration time: the location "
                   "row's created_at in glance's database, 1 us)", real_backend(args, Path(tmp) / "real"))
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
