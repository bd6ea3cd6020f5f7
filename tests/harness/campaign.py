"""The fault campaign: trials of uploads under one injected fault, then a check of every copy.

One :class:`Campaign` drives a running :class:`~tests.harness.faults.Site` (one topology
for the whole campaign).  Each trial uploads 5 to 10 images of mixed sizes to the
cascading glance, as a user would, while one fault of :data:`~tests.harness.faults.INJECTORS`
strikes at a random moment; then it waits until every (image, region) is final in the
coordinator's status (bounded by ``converge_timeout``) and checks, for each of them:

- the region holds an active image with the same id and the uploaded bytes (sha512 of
  a download from the regional glance);
- no active regional image has a size or hashes other than the cascading image's;
- the cascading image lists exactly one ``cascaded://<region>/<id>`` location;
- the state is ``synced``: every fault here is shorter than the retry budget, so a
  ``failed`` one should have succeeded.

Findings fall in :data:`CATEGORIES`; the trial then deletes its images (through the
cascading glance, so the regions are cleaned the usual way) and heals the site.
bench/faults.py and tests/functional/test_fault_campaign.py both run this code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from glancesync import status as status_tool
from glancesync.exceptions import GlanceSyncError
from glancesync.states import FINAL_STATES, SyncState
from tests.harness.faults import INJECTORS, TRIGGERED, Injected, Site

KIB, MIB = 1024, 1024 * 1024
# What a check can find; each one makes the campaign fail.  "upload": the cascading
# glance (never faulted) refused an upload, so the user saw an error.
CATEGORIES = ("lost", "corrupt", "stuck", "failed", "location", "upload")
CLEANUP_TIMEOUT = 120.0


@dataclass
class Upload:
    id: str
    size: int
    sha512: str


@dataclass
class Problem:
    category: str
    image: str
    region: str
    what: str
    evidence: list[str] = field(default_factory=list)

    def render(self, fault: str) -> str:
        lines = [f"{self.category}: {self.image} in {self.region} after {fault}: {self.what}"]
        return "\n".join(lines + [f"    {line}" for line in self.evidence])


@dataclass
class Trial:
    index: int
    fault: Injected
    uploads: list[Upload]
    upload_errors: list[str]
    converge_s: float | None
    problems: list[Problem]
    seconds: float
    offline: int = 0  # times the coordinator marked an agent offline during the trial


def image_sizes(rng: random.Random, count: int, smallest: int, largest: int) -> list[int]:
    """``count`` sizes, log-uniform between ``smallest`` and ``largest``: mostly small, a few large."""
    low, high = math.log(smallest), math.log(largest)
    return [int(math.exp(rng.uniform(low, high))) for _ in range(count)]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


class Campaign:
    """Runs trials on ``site`` and keeps their results."""

    def __init__(
        self,
        site: Site,
        *,
        seed: int,
        kinds: Sequence[str] | None = None,
        images: tuple[int, int] = (5, 10),
        sizes: tuple[int, int] = (4 * KIB, 40 * MIB),
        converge_timeout: float = 600.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.site = site
        self.topo = site.topo
        self.seed = seed
        known = [k for k in INJECTORS if k != "disk_full" or site.can_fill_disk]
        self.kinds = [k for k in (kinds or known) if k in known]
        if not self.kinds:
            raise ValueError(f"no fault kind to inject (can inject: {', '.join(known)})")
        self.images = images
        self.sizes = sizes
        self.converge_timeout = converge_timeout
        self.log = log
        self.trials: list[Trial] = []
        self.zmq = zmq.Context()
        self.status_conf = status_tool.load_conf(status_tool.parse_args(["--config-file", str(self.topo.service_conf)]))

    def close(self) -> None:
        self.zmq.term()

    def kind_of(self, index: int) -> str:
        """Every kind once, in an order drawn from the seed, then again: few trials still cover many kinds."""
        order = random.Random(f"{self.seed}-order-{index // len(self.kinds)}").sample(self.kinds, len(self.kinds))
        return order[index % len(self.kinds)]

    # -- the coordinator's view ------------------------------------------------------

    def image_view(self, image_id: str) -> dict[str, Any] | None:
        """The status view of one image, or None while the coordinator does not answer."""
        conf = self.status_conf
        try:
            return status_tool.query(self.zmq, conf, conf.sync_server_host, conf.sync_server_port,
                                     {"view": "image", "image_id": image_id}, 2.0)
        except (status_tool.StatusFailure, GlanceSyncError, zmq.ZMQError):
            return None

    def agents_online(self) -> bool:
        conf = self.status_conf
        try:
            data = status_tool.query(self.zmq, conf, conf.sync_server_host, conf.sync_server_port,
                                     {"view": "summary"}, 2.0)
        except (status_tool.StatusFailure, GlanceSyncError, zmq.ZMQError):
            return False
        regions = data.get("regions", {})
        return all(any(a.get("online") for a in regions.get(r, {}).get("agents", []))
                   for r in self.topo.region_names)

    def final(self, view: dict[str, Any] | None, wanted: frozenset[str] = FINAL_STATES) -> bool:
        if not view or not view.get("known") or not view.get("planned"):
            return False
        regions = view.get("regions") or {}
        return all(regions.get(r, {}).get("state") in wanted for r in self.topo.region_names)

    def wait_final(self, ids: Sequence[str], deadline: float,
                   wanted: frozenset[str] = FINAL_STATES) -> dict[str, dict[str, Any] | None]:
        """Poll until every image is in a ``wanted`` state in every region, or ``deadline``: the last views."""
        views: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)
        waiting = list(ids)
        while waiting:
            for image_id in list(waiting):
                view = self.image_view(image_id)
                views[image_id] = view or views[image_id]
                if self.final(view, wanted):
                    waiting.remove(image_id)
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return views

    # -- one trial ---------------------------------------------------------------------

    def upload_all(self, sizes: list[int], done: list[Upload], errors: list[str]) -> None:
        client = self.topo.cascading.client()
        for size in sizes:
            data = os.urandom(size)
            image: dict[str, Any] = {}
            try:
                image = client.images.create(name=f"fault-{uuid.uuid4().hex[:8]}", disk_format="raw",
                                             container_format="bare", visibility="public")
                client.images.upload(image["id"], io.BytesIO(data), image_size=size)
                done.append(Upload(image["id"], size, hashlib.sha512(data).hexdigest()))
            except Exception as exc:  # an upload that fails is reported, not a campaign crash
                errors.append(f"upload of {size} bytes as {image.get('id')} failed: {type(exc).__name__}: {exc}")
                if image.get("id"):
                    with contextlib.suppress(Exception):
                        client.images.delete(image["id"])

    def trial(self, index: int) -> Trial:
        rng = random.Random(f"{self.seed}-{index}")
        kind = self.kind_of(index)
        sizes = image_sizes(rng, rng.randint(*self.images), *self.sizes)
        started = time.monotonic()
        log_start = self.coordinator_log_size()
        uploads: list[Upload] = []
        errors: list[str] = []
        uploader = threading.Thread(target=self.upload_all, args=(sizes, uploads, errors), daemon=True)
        uploader.start()
        if kind not in TRIGGERED:
            time.sleep(rng.uniform(0.0, 5.0))
        fault = INJECTORS[kind](self.site, rng, lambda: {u.id for u in uploads})
        uploader.join()
        ready = max(time.monotonic(), fault.healed_at)
        ids = [u.id for u in uploads]
        views = self.wait_final(ids, ready + self.converge_timeout)
        converged = all(self.final(v) for v in views.values())
        converge_s = time.monotonic() - ready if converged else None
        problems = [p for u in uploads for p in self.check(u, views.get(u.id))]
        problems += [Problem("upload", "-", "cascading", e) for e in errors]
        trial = Trial(index, fault, uploads, errors, converge_s, problems, time.monotonic() - started,
                      self.offline_count(log_start))
        self.cleanup(ids)
        return trial

    def coordinator_log_size(self) -> int:
        try:
            return (self.topo.log_dir / "coordinator.log").stat().st_size
        except OSError:
            return 0

    def offline_count(self, offset: int) -> int:
        """How often the coordinator marked an agent offline in its log since byte ``offset``."""
        try:
            with open(self.topo.log_dir / "coordinator.log", "rb") as fh:
                fh.seek(offset)
                return fh.read().count(b" is offline: ")
        except OSError:
            return 0

    def run(self, count: int, after: Callable[[list[Trial]], None] | None = None) -> list[Trial]:
        """Run ``count`` trials; ``after(trials so far)`` is called after each one."""
        for index in range(count):
            trial = self.trial(index)
            self.trials.append(trial)
            if after is not None:
                after(self.trials)
            took = f"converged in {trial.converge_s:.1f} s" if trial.converge_s is not None else "NOT converged"
            mb = sum(u.size for u in trial.uploads) / MIB
            self.log(f"trial {index + 1}/{count}: {trial.fault.kind} ({trial.fault.detail}); "
                     f"{len(trial.uploads)} images, {mb:.1f} MiB; {took}; agents marked offline "
                     f"{trial.offline} time(s); {len(trial.problems)} problem(s)")
            for problem in trial.problems:
                self.log("  " + problem.render(trial.fault.kind))
        return self.trials

    # -- checks ------------------------------------------------------------------------

    def check(self, upload: Upload, view: dict[str, Any] | None) -> list[Problem]:
        cascading = self.topo.cascading.client().images.get(upload.id)
        problems = []
        for region in self.topo.region_names:
            entry = ((view or {}).get("regions") or {}).get(region, {})
            problems += self.check_copy(upload, dict(cascading), region, entry)
        return problems

    def check_copy(self, upload: Upload, cascading: dict[str, Any], region: str,
                   entry: dict[str, Any]) -> list[Problem]:
        state = entry.get("state")
        url = f"cascaded://{region}/{upload.id}"
        locations = [loc for loc in cascading.get("locations") or [] if loc.get("url") == url]
        copy = self.regional(region, upload.id)
        evidence = [f"state {state or 'unknown'}, attempts {entry.get('attempts')}, "
                    f"last_error {entry.get('last_error')!r}",
                    f"regional image: {_describe(copy)}; {len(locations)} location(s) {url}"]
        found = []

        def problem(category: str, what: str) -> None:
            found.append(Problem(category, upload.id, region, what, evidence + self.log_lines(upload.id, region)))

        active = copy is not None and copy.get("status") == "active"
        if active:
            same = all(copy.get(k) == cascading.get(k) for k in ("size", "checksum", "os_hash_value"))
            digest = self.regional_sha512(region, upload.id)
            if not same or digest != upload.sha512:
                where = "registered" if locations else "active, not registered"
                problem("corrupt", f"regional copy differs from the upload ({where}; "
                                   f"hashes {'equal' if same else 'differ'}, bytes {'equal' if digest == upload.sha512 else 'differ'})")
        if state == SyncState.SYNCED:
            if not active:
                problem("lost", "synced in the journal but the region has no active copy")
            if len(locations) != 1:
                problem("location", f"{len(locations)} locations {url} on the cascading image (want 1)")
        elif state == SyncState.FAILED:
            problem("failed", f"failed: {entry.get('last_error')}")
        elif state in FINAL_STATES:
            problem("lost", f"state {state} for an image nobody deleted")
        elif state:
            problem("stuck", f"still {state} after {self.converge_timeout:.0f} s")
        else:
            problem("lost", "the coordinator never planned this region")
        if state != SyncState.SYNCED and locations:
            problem("location", f"{len(locations)} location(s) {url} though the region is {state}")
        return found

    def regional(self, region: str, image_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.topo.cascaded[region].client().images.get(image_id))
        except Exception as exc:
            if "404" in str(exc) or "not found" in str(exc).lower():
                return None
            return {"status": f"unreadable ({exc})"}

    def regional_sha512(self, region: str, image_id: str) -> str:
        digest = hashlib.sha512()
        for chunk in self.topo.cascaded[region].client().images.data(image_id):
            digest.update(chunk)
        return digest.hexdigest()

    def log_lines(self, image_id: str, region: str, limit: int = 6) -> list[str]:
        """The last WARNING/ERROR lines of our services' logs that name the image."""
        pattern = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
        lines: list[str] = []
        for path in sorted(self.topo.log_dir.glob("*.log")):
            text = path.read_text(errors="replace")
            lines += [f"{path.name}: {line.strip()}" for line in text.splitlines()
                      if image_id in line and pattern.search(line)]
        return lines[-limit:]

    def cleanup(self, ids: Sequence[str]) -> None:
        """Delete the trial's images everywhere and heal the site, so the next trial starts clean."""
        self.site.heal()
        client = self.topo.cascading.client()
        for image_id in ids:
            try:
                client.images.delete(image_id)
            except Exception as exc:
                self.log(f"  cleanup: delete {image_id} failed: {exc}")
        deadline = time.monotonic() + CLEANUP_TIMEOUT
        views = self.wait_final(ids, deadline, frozenset({SyncState.DELETED, SyncState.FAILED}))
        left = [i for i, v in views.items() if not self.final(v, frozenset({SyncState.DELETED}))]
        if left:
            self.log(f"  cleanup: {len(left)} image(s) not deleted everywhere: {', '.join(left)}")
        deadline = time.monotonic() + 60
        while not self.agents_online() and time.monotonic() < deadline:
            time.sleep(0.5)


def _describe(image: dict[str, Any] | None) -> str:
    if image is None:
        return "none"
    return f"{image.get('status')}, size {image.get('size')}, checksum {image.get('checksum')}"


def summarize(trials: Sequence[Trial]) -> dict[str, Any]:
    """The campaign's figures, as data (bench/faults.py prints them, the test asserts on them)."""
    kinds: dict[str, dict[str, int]] = {}
    for trial in trials:
        entry = kinds.setdefault(trial.fault.kind, {"injected": 0, "missed": 0})
        entry["missed" if trial.fault.missed else "injected"] += 1
    counts = {c: sum(p.category == c for t in trials for p in t.problems) for c in CATEGORIES}
    converge = [t.converge_s for t in trials if t.converge_s is not None]
    return {
        "trials": len(trials),
        "images": sum(len(t.uploads) for t in trials),
        "faults": kinds,
        **counts,
        "corrupt_registered": sum(p.category == "corrupt" and "(registered" in p.what
                                  for t in trials for p in t.problems),
        "failed_regions": sorted({p.region for t in trials for p in t.problems if p.category == "failed"}),
        "converge_p50": percentile(converge, 0.50),
        "converge_p95": percentile(converge, 0.95),
        "converge_max": max(converge, default=None),
        "offline": sum(t.offline for t in trials),
    }


def ok(summary: dict[str, Any]) -> bool:
    return all(summary[c] == 0 for c in CATEGORIES)


def render(summary: dict[str, Any]) -> str:
    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    faults = ", ".join(f"{k} {v['injected']}" + (f" (+{v['missed']} missed)" if v["missed"] else "")
                       for k, v in sorted(summary["faults"].items()))
    return "\n".join([
        f"trials run:                 {summary['trials']} ({summary['images']} images)",
        f"faults by kind:             {faults}",
        f"images lost:                {summary['lost']}",
        f"corrupt copies:             {summary['corrupt']} (registered: {summary['corrupt_registered']})",
        f"tasks stuck:                {summary['stuck']}",
        f"failed (should succeed):    {summary['failed']} (regions: {', '.join(summary['failed_regions']) or '-'})",
        f"bad locations:              {summary['location']}",
        f"uploads refused:            {summary['upload']}",
        f"agents marked offline:      {summary['offline']} time(s) (a fault that stops or kills one: 1 each)",
        f"time to converge:           p50 {secs(summary['converge_p50'])}, p95 {secs(summary['converge_p95'])}, "
        f"max {secs(summary['converge_max'])}",
    ])
