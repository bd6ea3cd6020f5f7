"""The WAN bench's capped run: every region's agent under ``[agent] max_bandwidth``, the rate its link carried.

The region agents of the topology are stopped and ``copies`` images uploaded
while none runs, so that each region's new agent (``max_bandwidth = cap``,
``max_concurrent_copies = workers = copies``) gets all of them at once: the
copies then run side by side, sharing the region's one budget (agent/budget.py),
and the region's total is what is compared with the cap.  While they run, the bytes the cascading
site sends over each link (veth ``tx_bytes``) are sampled; a region's achieved
rate is taken between 5 % and 95 % of its bytes, so the start of the copies
(dispatch, handshakes) and their end (the last registration) do not count.
Those bytes are what the link carries: SFTP payload plus SSH and TCP framing
(a few per cent), so a region held exactly at its cap shows slightly above it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench import wan_net
from tests.functional import helpers

# Seconds between two samples of the links' counters.
SAMPLE_SECONDS = 0.5
LOW, HIGH = 0.05, 0.95


def steady_rate(samples: list[tuple[float, int]], low: float = LOW, high: float = HIGH) -> float:
    """Bytes per second between fractions ``low`` and ``high`` of the bytes counted in ``samples``
    ((time, counter), in order)."""
    if len(samples) < 2:
        return 0.0
    base, total = samples[0][1], samples[-1][1] - samples[0][1]
    if total <= 0:
        return 0.0
    first = next(s for s in samples if s[1] - base >= low * total)
    last = next(s for s in samples if s[1] - base >= high * total)
    if last[0] <= first[0]:
        return 0.0
    return (last[1] - first[1]) / (last[0] - first[0])


def quarters(samples: list[tuple[float, int]]) -> list[float]:
    """The rate over each quarter of the bytes (5-25-50-75-95 %): shows whether it held all along."""
    bounds = [LOW, 0.25, 0.5, 0.75, HIGH]
    return [steady_rate(samples, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


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

    def quarters(self) -> dict[str, list[float]]:
        return {region: quarters(samples) for region, samples in self.samples.items()}


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
    return {"wall": wall, "rates": sampler.rates(), "quarters": sampler.quarters(), "sent": sent, "images": copies,
            "size": size, "load": os.getloadavg()}


def report(result: dict[str, Any], cap_mbit: float) -> list[str]:
    """Lines for the capped run: each region's rate beside the cap, and whether it held within 10 %."""
    lines = [f"capped run: max_bandwidth = {cap_mbit:g} Mbit/s, {result['images']} copies of "
             f"{result['size'] // helpers.MIB} MiB per region side by side (max_concurrent_copies = "
             f"{result['images']}), all synced in {result['wall']:.1f} s, load at the end "
             + " ".join(f"{x:.1f}" for x in result.get("load", ()))]
    for region, rate in sorted(result["rates"].items()):
        mbit = rate * 8 / 1e6
        ratio = mbit / cap_mbit
        verdict = "met" if 0.9 <= ratio <= 1.1 else "MISSED"
        lines.append(f"  {region:<10} link carried {mbit:7.1f} Mbit/s (5-95 % of "
                     f"{result['sent'][region] / helpers.MIB:,.0f} MiB)  = {ratio:4.2f} x cap  "
                     f"(target 0.9-1.1) {verdict}")
        if result.get("quarters"):
            lines.append("             by quarter of its bytes: " + " / ".join(
                f"{q * 8 / 1e6:.1f}" for q in result["quarters"][region]) + " Mbit/s")
    return lines
