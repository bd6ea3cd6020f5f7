"""Drain rate of the glance_proxy outbox: a 30k-event backlog sent to an acking peer, in one run.

The backlog is what a worker finds after the coordinator was down for a while (or
what a dead worker left): ``--events`` event files in one spool directory under a
fresh ``spool_dir``.  A real ``EventSender`` adopts it and sends it, up to
``SEND_WINDOW`` events in flight, to a peer in another process that acks each event
the way the coordinator does:

- ``router``: decodes the frames and acks at once (the wire and the sender alone);
- ``journal``: first commits the events that arrived to the coordinator's real journal
  (SQLite, ``Journal.record_event`` in one ``batch``, fsync'd) — what the coordinator's
  loop does in one iteration before its acks.

Beside them, measured in the same run against the same ``router`` peer:

- ``raw zmq``: the stop-and-wait round trip alone, no disk (the ceiling);
- ``old listing``: the previous sender's loop emulated — the spool directory listed
  and sorted twice per event sent — on the same 30k backlog, over ``--old-events``.

For each it prints events/s, the sender's CPU per event, and the ratio to the new
drain.  Usage: ``.venv/bin/python bench/outbox_drain.py [--events N] [--old-events N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack  # noqa: E402
import zmq  # noqa: E402
from oslo_config import cfg  # noqa: E402

from glance_proxy.sender import EventSender  # noqa: E402
from glancesync import opts, protocol  # noqa: E402
from glancesync.liveness import Backoff  # noqa: E402


def event(n: int) -> dict:
    return {
        "event_id": f"{n:032x}", "kind": "updated", "image_id": f"00000000-0000-4000-8000-{n:012d}",
        "image": {"id": f"00000000-0000-4000-8000-{n:012d}", "name": f"image-{n}", "status": "active",
                  "owner": "0123456789abcdef0123456789abcdef", "visibility": "private", "size": 1 << 30},
        "changes": ["name"], "context": {"user_id": "u", "project_id": "p", "roles": ["member"]},
        "occurred_at": 1.7e9 + n,
    }  # fmt: skip


def peer(port: int, journal_url: str | None, ready: multiprocessing.synchronize.Event) -> None:
    """The acking side, in its own process: ack each event (after a journal commit when asked)."""
    journal = None
    if journal_url:
        from coordinator import manage
        from coordinator.journal import Journal

        manage.db_sync(journal_url)
        journal = Journal(journal_url)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    while True:
        # As the coordinator's loop does: take what has arrived, commit it in one
        # transaction, then ack each event (nothing is acked before the commit).
        received = [sock.recv_multipart()]
        while len(received) < 1000 and sock.poll(0):
            received.append(sock.recv_multipart(zmq.NOBLOCK))
        bodies = [(ident, protocol.decode(frame).body) for ident, frame in received]
        if journal is not None:
            with journal.batch():
                for _ident, body in bodies:
                    journal.record_event(body["event_id"], body["kind"], body["image_id"], body, time.time())
        for ident, body in bodies:
            sock.send_multipart([ident, protocol.encode("event_ack", {"event_id": body["event_id"]})])


class Peer:
    def __init__(self, journal_url: str | None = None) -> None:
        with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as probe:
            self.port = probe.bind_to_random_port("tcp://127.0.0.1")
        spawn = multiprocessing.get_context("spawn")
        ready = spawn.Event()
        self.proc = spawn.Process(target=peer, args=(self.port, journal_url, ready), daemon=True)
        self.proc.start()
        if not ready.wait(60):
            raise SystemExit("the acking peer did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join()


def backlog(root: Path, count: int) -> Path:
    """``count`` event files in one spool directory nobody holds (written fast: only the drain is timed)."""
    spool = root / "backlog-0"
    spool.mkdir(parents=True)
    for n in range(1, count + 1):
        (spool / f"{n:020d}.evt").write_bytes(msgpack.packb(event(n), use_bin_type=True))
    return spool


def make_conf(spool_dir: Path, port: int) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    opts.register_filter_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("sync_server_host", "127.0.0.1")
    conf.set_override("sync_server_port", port)
    conf.set_override("spool_dir", str(spool_dir), group="proxy")
    conf.set_override("spool_max_bytes", 1 << 30, group="proxy")
    return conf


def drain(base: Path, count: int, journal: bool) -> tuple[float, float]:
    """(events/s, sender CPU s per event) of a real EventSender draining a ``count`` backlog."""
    root = base / ("journal" if journal else "router")
    spool = backlog(root / "spool", count)
    peer_proc = Peer(f"sqlite:///{root / 'journal.sqlite'}" if journal else None)
    try:
        sender = EventSender(make_conf(root / "spool", peer_proc.port), backoff=Backoff(initial=0.05, maximum=0.5))
        wall, cpu = time.perf_counter(), time.process_time()
        sender.start()
        while spool.exists():  # removed once its last event is acked
            time.sleep(0.02)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sender.close()
    finally:
        peer_proc.stop()
    return count / wall, cpu / count


def raw_round_trips(count: int) -> tuple[float, float]:
    """Stop-and-wait event/ack round trips with nothing on disk: the ceiling."""
    peer_proc = Peer()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{peer_proc.port}")
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for n in range(1, count + 1):
            sock.send(protocol.encode("event", event(n)))
            protocol.decode(sock.recv())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        sock.close(0)
        ctx.term()
        peer_proc.stop()
    return count / wall, cpu / count


def old_listing(base: Path, backlog_size: int, count: int) -> tuple[float, float]:
    """The previous loop: list+sort the spool twice per event, then read, send, await ack, unlink."""
    spool = backlog(base / "old" / "spool", backlog_size)
    peer_proc = Peer()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{peer_proc.port}")

    def pending() -> list[Path]:
        return sorted(p for p in spool.iterdir() if p.name.endswith(".evt") and p.name[0] != ".")

    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            pending()  # step(): is anything pending?
            path = pending()[0]  # step(): after spooling the queue, the oldest
            sock.send(protocol.encode("event", msgpack.unpackb(path.read_bytes(), raw=False)))
            protocol.decode(sock.recv())
            path.unlink()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        sock.close(0)
        ctx.term()
        peer_proc.stop()
    return count / wall, cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=30_000, help="backlog size (default 30000)")
    parser.add_argument("--old-events", type=int, default=100, help="events sent by the old loop (default 100)")
    parser.add_argument("--no-journal", action="store_true", help="skip the run against the SQLite journal")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
        base = Path(tmp)
        # The ceiling right before and after the new drain: on a shared machine the
        # round-trip latency (two wake-ups per event) moves with the load.
        before = raw_round_trips(min(args.events, 5_000))
        results = {"new drain, router acks": drain(base, args.events, journal=False)}
        after = raw_round_trips(min(args.events, 5_000))
        results["raw zmq round trip (ceiling)"] = ((before[0] + after[0]) / 2, (before[1] + after[1]) / 2)
        if not args.no_journal:
            results["new drain, journal commit + ack"] = drain(base, args.events, journal=True)
        results[f"old listing (backlog {args.events})"] = old_listing(base, args.events, args.old_events)
    new = results["new drain, router acks"][0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"outbox drain, backlog {args.events} events; {os.cpu_count()} cores, load {load}")
    print(f"{'':38} {'events/s':>10} {'CPU us/event':>13} {'new / this':>11}")
    for name, (rate, cpu) in results.items():
        print(f"{name:38} {rate:10.1f} {cpu * 1e6:13.0f} {new / rate:11.2f}")


if __name__ == "__main__":
    main()
