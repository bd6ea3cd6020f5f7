"""Added latency of the glancesync paste filter: the same requests against a bare glance-api
and against one with the filter, side by side, in one run.

Both glance-apis run from the same venv and config, one with ``glancesync`` after
``context`` in the pipeline.  The filtered one is measured twice: with a real
coordinator receiving its events (which then fetches each image from that same
glance-api, as in production) and with the coordinator stopped (events only go to
the on-disk outbox: the filter's own cost).  For each kind of request it prints the
medians and their ratios to the bare glance-api:

- ``GET image``: a call that changes nothing (the filter must cost nothing measurable),
- ``PATCH image``: an event-making call (the filter maps it and queues an event),
- ``create+upload 64 KiB``: two event-making calls with a body.

Usage: ``.venv/bin/python bench/filter_latency.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.glance import GlanceServer  # noqa: E402
from tests.harness.topology import Topology  # noqa: E402


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    fn()  # warm: connection pool, glance's caches
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def p95(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.95) - 1]


def workloads(server: GlanceServer) -> dict[str, Callable[[], object]]:
    client = server.client()
    image = client.images.create(name="bench", disk_format="raw", container_format="bare")
    client.images.upload(image["id"], io.BytesIO(b"x" * 4096), image_size=4096)
    counter = iter(range(10**9))

    def create_upload() -> None:
        new = client.images.create(name="bench-up", disk_format="raw", container_format="bare")
        client.images.upload(new["id"], io.BytesIO(b"y" * 65536), image_size=65536)

    return {
        "GET image": lambda: client.images.get(image["id"]),
        "PATCH image": lambda: client.images.update(image["id"], bench_counter=str(next(counter))),
        "create+upload 64 KiB": create_upload,
    }


def compare(plain: Callable[[], object], filtered: Callable[[], object], rounds: int) -> tuple[list, list]:
    base: list[float] = []
    with_filter: list[float] = []
    for _ in range(2):  # interleaved, to spread any drift of the machine over both sides
        base += timed(plain, rounds // 2)
        with_filter += timed(filtered, rounds // 2)
    return base, with_filter


def run(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="glancesync-bench-") as tmp:
        topo = Topology(Path(tmp) / "topo", regions=1, sync_filter=True, cascaded_store=False)
        bare = GlanceServer("bare", Path(tmp) / "topo" / "glance" / "bare")
        topo.start()
        try:
            bare.start()
            coordinator = topo.start_coordinator()
            filtered, plain = workloads(topo.cascading), workloads(bare)
            results = {name: compare(plain[name], filtered[name], rounds) for name in filtered}
            coordinator.stop()
            spooled = {name: compare(plain[name], filtered[name], rounds)[1] for name in filtered}
            print(f"glancesync filter: latency per request, median of {rounds} (p95 in brackets), ms")
            print(f"{'request':<22}{'bare':>16}{'filter+coordinator':>22}{'ratio':>7}"
                  f"{'filter, spool only':>22}{'ratio':>7}")
            for name, (base, live) in results.items():
                bm, lm, sm = (statistics.median(x) for x in (base, live, spooled[name]))
                cells = [f"{statistics.median(x) * 1000:.1f} [{p95(x) * 1000:.1f}]" for x in (base, live, spooled[name])]
                print(f"{name:<22}{cells[0]:>16}{cells[1]:>22}{lm / bm:>7.2f}{cells[2]:>22}{sm / bm:>7.2f}")
        finally:
            bare.stop()
            topo.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    run(parser.parse_args().rounds)
