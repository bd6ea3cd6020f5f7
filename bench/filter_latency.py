"""Added latency of the glancesync paste filter: the same requests against a bare glance-api
and against one with the filter, side by side, in one run.

Both glance-apis run from the same venv and config, one with ``glancesync`` after
``context`` in the pipeline and a real coordinator receiving its events.  For each kind
of request it prints the median and p95 of both and their ratio (filter / bare):

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


def run(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="glancesync-bench-") as tmp:
        topo = Topology(Path(tmp) / "topo", regions=1, sync_filter=True, cascaded_store=False)
        bare = GlanceServer("bare", Path(tmp) / "topo" / "glance" / "bare")
        topo.start()
        try:
            bare.start()
            topo.start_coordinator()
            filtered = workloads(topo.cascading)
            plain = workloads(bare)
            print(f"glancesync filter: added latency per request ({rounds} rounds each, seconds)")
            print(f"{'request':<22}{'bare median':>12}{'filter median':>15}{'ratio':>7}"
                  f"{'bare p95':>10}{'filter p95':>12}{'ratio':>7}")
            for name in filtered:
                # Interleave to spread any drift of the machine over both sides.
                base, with_filter = [], []
                for _ in range(2):
                    base += timed(plain[name], rounds // 2)
                    with_filter += timed(filtered[name], rounds // 2)
                bm, fm = statistics.median(base), statistics.median(with_filter)
                bp, fp = p95(base), p95(with_filter)
                print(f"{name:<22}{bm:>12.4f}{fm:>15.4f}{fm / bm:>7.2f}{bp:>10.4f}{fp:>12.4f}{fp / bp:>7.2f}")
        finally:
            bare.stop()
            topo.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    run(parser.parse_args().rounds)
