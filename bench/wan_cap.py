"""The WAN bench's capped run: every region's agent under ``[agent] max_bandwidth``, the rate its link carried.

The region agents of the topology are stopped and ``copies`` images uploaded
while none runs, so that each region's new agent (``max_bandwidth = cap``,
``max_concurrent_copies = workers = copies``) gets all of them at once: the
copies then run side by side, each with its share of the cap, and the region's
total is what is compared with the cap.  While they run, the bytes the cascading
site sends over each link (veth ``tx_bytes``) are sampled; a region's achieved
rate is taken between 5 % and 95 % of its bytes, so the start of the copies
(dispatch, handshakes) and their end (the last registration) do not count.
Those bytes are what the link carries: SFTP payload plus SSH and TCP framing
(a few per cent), so a region held exactly at its cap shows slightly above it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench import wan_net
from tests.functional import helpers

# Seconds between two samples of the links' counters.
SAMPLE_SECONDS = 0.5
LOW, HIGH = 0.05, 0.95


def steady_rate(samples: list[tuple[float, int]]) -> float:
    """Bytes per second between LOW and HIGH of the bytes counted in ``samples`` ((time, counter), in order)."""
    if len(samples) < 2:
        return 0.0
    base, total = samples[0][1], samples[-1][1] - samples[0][1]
    if total <= 0:
        return 0.0
    low = next(s for s in samples if s[1] - base >= LOW * total)
    high = next(s for s in samples if s[1] - base >= HIGH * total)
    if high[0] <= low[0]:
        return 0.0
    return (high[1] - low[1]) / (high[0] - low[0])


class LinkSampler:
    """Samples each link's cascading-side ``tx_bytes`` in a thread until stopped."""

    def __init__(self, plan: wan_net.Plan) -> None:
        self.plan = plan
        self.samples: dict[str, list[tuple[float, int]]] = {link.region: [] for link in plan.links}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-sampler", daemon=True)

    def _sample(self) -> None:
        for link in self.plan.links:
            # Reading the counter starts a process: it was read halfway through that, give or take.
            before = time.monotonic()
            count = wan_net.tx_bytes(self.plan.casc_ns, link.casc_dev)
            self.samples[link.region].append(((before + time.monotonic()) / 2, count))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> LinkSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the final count, after every region is synced

    def rates(self) -> dict[str, float]:
        return {region: steady_rate(samples) for region, samples in self.samples.items()}


def capped_run(topo: Any, plan: wan_net.Plan, size: int, cap_mbit: float, copies: int,
               timeout: float) -> dict[str, Any]:
    """Agents restarted under the cap, ``copies`` images to every region: wall time, bytes and rate per region."""
    topo.stop_region_agents()
    uploads = [topo.upload(size) for _ in range(copies)]
    options = {"max_bandwidth": cap_mbit, "max_concurrent_copies": copies, "workers": copies}
    with LinkSampler(plan) as sampler:
        started = time.monotonic()
        topo.start_region_agents(options, suffix="cap")
        for image_id, uploaded in uploads:
            topo.wait_synced(image_id, uploaded, timeout)
        wall = time.monotonic() - started
    sent = {region: samples[-1][1] - samples[0][1] for region, samples in sampler.samples.items()}
    return {"wall": wall, "rates": sampler.rates(), "sent": sent, "images": copies, "size": size}


def report(result: dict[str, Any], cap_mbit: float) -> list[str]:
    """Lines for the capped run: each region's rate beside the cap, and whether it held within 10 %."""
    lines = [f"capped run: max_bandwidth = {cap_mbit:g} Mbit/s, {result['images']} copies of "
             f"{result['size'] // helpers.MIB} MiB per region side by side (max_concurrent_copies = "
             f"{result['images']}), all synced in {result['wall']:.1f} s"]
    for region, rate in sorted(result["rates"].items()):
        mbit = rate * 8 / 1e6
        ratio = mbit / cap_mbit
        verdict = "met" if 0.9 <= ratio <= 1.1 else "MISSED"
        lines.append(f"  {region:<10} link carried {mbit:7.1f} Mbit/s (5-95 % of "
                     f"{result['sent'][region] / helpers.MIB:,.0f} MiB)  = {ratio:4.2f} x cap  "
                     f"(target 0.9-1.1) {verdict}")
    return lines
