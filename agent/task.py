"""What a worker process runs: one task dict in, one result dict out.

``worker_main`` is the entry point of the process the pool starts: it builds its
own glance client (nothing with sockets or threads crosses a process boundary),
runs the task and puts ``("progress", task_id, done, total, phase)`` and finally
``("result", task_id, result)`` on the pool's queue.  ``run_task`` is the same
work without a process, for tests and for callers that want a plain function;
``run_inline`` is what an agent thread runs for an update or a delete (no process,
a glance session that refuses further requests once the task is cancelled).

A result is ``{"outcome": "done", size, checksum, os_hash_algo, os_hash_value,
elapsed}`` (hash fields None for update and delete; a copy to a region whose glance
hashes with another algorithm adds ``region_hash_algo`` and ``region_hash_value``)
or ``{"outcome": "failed", reason, retryable}``.  No exception leaves ``run_task``:
a bug becomes a retryable failure with its message, never a dead worker with no word.

A copy holds the image's ``.part`` lock (agent/partlock.py) from its fetch to the
end of its upload, and a delete holds it while it removes the file: one attempt
per image and agent host, whatever the pool or a restart did.  A 0-byte image is
refused before anything is created in the region (agent/upload.py says why).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg
from oslo_log import log as oslo_log
from oslo_utils import strutils

from agent import apply, download, partlock, pipeline, runners, sources, transfer, upload
from agent.cache import Cache
from glancesync import glance, untrusted
from glancesync import verify as check
from glancesync.exceptions import GlanceSyncError, VerificationError
from glancesync.storemap import StoreMap

LOG = logging.getLogger(__name__)

# oslo.log's project name: the same one glancesync.config sets up in the agent.
LOG_PROJECT = "glance-sync"
# Credentials in HTTP header form ("X-Auth-Token: gAAA...", "Authorization: Bearer x")
# that strutils.mask_password does not know.
_SECRET_HEADER = re.compile(
    r"(?i)((?:x-auth-token|x-subject-token|x-service-token|authorization)['\"]?\s*[:=]\s*['\"]?)[^'\",\s}]+"
    r"(?:\s+[^'\",\s}]+)?"
)

# Progress is sent at most this often even when 5% steps come faster (small
# images, fast links): a few per second is plenty for a status display.
MIN_PROGRESS_GAP = 0.25
ProgressFn = Callable[[int, int], None]
PhaseFn = Callable[[str], None]
PROGRESS_STEP = 0.05


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs besides the task; picklable for the spawn context."""

    store_map: StoreMap
    region: str
    progress_interval: float = 1.0
    ssh_timeout: float = 30.0
    # Method, idle timeout and paramiko window of the fetch ([agent] options).
    fetch: transfer.FetchOptions = transfer.FetchOptions()
    # The agent's oslo.log option values (name, value), so a worker logs where and
    # how the agent does; empty: oslo.log defaults (stderr).
    log_options: tuple[tuple[str, Any], ...] = ()
    # [agent] cache_dir (None: no cache) and cache_max_bytes (agent/cache.py).
    cache_dir: str | None = None
    cache_max_bytes: int = 0

    def cache(self) -> Cache | None:
        return Cache(self.cache_dir, self.cache_max_bytes) if self.cache_dir else None


def logging_options(conf: Any) -> tuple[tuple[str, Any], ...]:
    """The oslo.log option values of ``conf`` (a ConfigOpts set up by glancesync.config)."""
    probe = cfg.ConfigOpts()
    builtin = set(probe)  # config_source and the like: not logging's
    oslo_log.register_options(probe)
    return tuple(
        (name, conf[name])
        for name in probe
        if name not in builtin and not isinstance(probe[name], cfg.ConfigOpts.GroupAttr)
    )


def setup_worker_logging(log_options: tuple[tuple[str, Any], ...]) -> None:
    """oslo.log in a worker process, with the agent's options (log file, format, levels)."""
    conf = cfg.ConfigOpts()
    oslo_log.register_options(conf)
    conf([], project=LOG_PROJECT, default_config_files=[], default_config_dirs=[])
    for name, value in log_options:
        if value is not None:
            conf.set_override(name, value)
    oslo_log.setup(conf, LOG_PROJECT)


def redact(text: str) -> str:
    """``text`` with passwords, tokens and secrets masked (for reasons and log lines)."""
    return strutils.mask_password(_SECRET_HEADER.sub(r"\1***", text))


def failure_reason(text: str) -> str:
    """A failure reason as it travels and is stored: secrets masked, control characters escaped.

    Reasons quote library and glance messages; they end up in the journal's
    last_error and on operators' terminals, where an escape sequence must do nothing.
    """
    return untrusted.printable(redact(text))


class ProgressThrottle:
    """Calls ``send(done, total, phase)`` every ``interval`` s and every 5%, but not more than ~4/s.

    A new phase (``enter``) is sent with the next bytes whatever the pace; the
    fetch and the upload report from their own threads, hence the lock.
    """

    def __init__(self, send: Callable[[int, int, str | None], None], interval: float,
                 clock: Callable[[], float] = time.monotonic):
        self.send = send
        self.interval = interval
        self.clock = clock
        self.last_time: float | None = None
        self.last_step = -1
        self.phase: str | None = None
        self.lock = threading.Lock()

    def enter(self, phase: str) -> None:
        with self.lock:
            self.phase, self.last_time, self.last_step = phase, None, -1

    def __call__(self, done: int, total: int) -> None:
        with self.lock:
            now = self.clock()
            step = int(done / total / PROGRESS_STEP) if total > 0 else 0
            since = None if self.last_time is None else now - self.last_time
            due = since is None or since >= self.interval or (step > self.last_step and since >= MIN_PROGRESS_GAP)
            if due or (done >= total and since is not None and since >= MIN_PROGRESS_GAP):
                self.last_time, self.last_step = now, step
                self.send(done, total, self.phase)


def _done(**fields: Any) -> dict[str, Any]:
    result = {"outcome": "done", "size": None, "checksum": None, "os_hash_algo": None, "os_hash_value": None}
    result.update(fields)
    return result


def _report(verified: check.Digest, algo: str) -> dict[str, Any]:
    """The ``done`` of a copy: the bytes' values in the cascading image's algorithm, plus the region's own."""
    fields = {"size": verified.size, "checksum": verified.checksum, "os_hash_algo": algo,
              "os_hash_value": verified.hashes.get(algo)}
    region_algo = next((a for a in sorted(verified.hashes) if a != algo), None)
    if region_algo:
        fields.update(region_hash_algo=region_algo, region_hash_value=verified.hashes[region_algo])
    return _done(**fields)


def _copy(task: dict[str, Any], settings: WorkerSettings, client: Any, progress: ProgressFn,
          phase: PhaseFn) -> dict:
    image = dict(task["image"])
    image.setdefault("id", task["image_id"])
    if image["id"] != task["image_id"]:
        raise transfer.SourceRefused(image_id=task["image_id"], detail="task image record has another id")
    upload.refuse_empty(image)
    region = settings.store_map.region(settings.region)
    endpoint = region.glance.url or settings.region
    regional = glance.get_image(client, image["id"], endpoint)
    action = upload.existing_copy(regional, image, endpoint)
    # Idempotent: an earlier attempt (or another agent) may already have made the copy.
    if action == "done":
        return _report(check.Digest.of_record(image, "cascading image"), image.get("os_hash_algo"))
    if action == "rehash" and regional is not None:
        return _report(upload.rehash_regional(client, image, regional, endpoint), image["os_hash_algo"])
    if download.snapshot_region(task.get("source")) == settings.region:
        # The snapshot's own region: its image is the copy, checked above; nothing to fetch.
        raise VerificationError(image_id=image["id"], retryable=False,
                                detail=f"the snapshot in this region is not the recorded one ({action})")
    source = download.where_from(image["id"], task.get("source"), settings.store_map)
    dest = transfer.part_path(region.work_dir, image["id"])
    chain: list[sources.Source] = []
    if source.region is None:  # the cascading store's image: regions holding it may serve it too
        chain = sources.resolve(task, source.store, settings.store_map.peers, settings.region, region.work_dir)
    cache = settings.cache()
    # The running copy of a store image is relayed to the regions that follow it (doc/peers.md).
    relays = cache is not None and source.region is None and cache.can_relay(region.work_dir)
    served: list[str] = []
    job = pipeline.Copy(source.store, image, source.path, dest, client, endpoint, settings.fetch,
                        settings.ssh_timeout, source.download, source.region, sources=tuple(chain),
                        served_by=served.append,
                        retire=None if cache is None else lambda path: cache.admit(image["id"], path),
                        relay=(lambda path: cache.relay(image["id"], path)) if relays else None)
    # One writer per .part for the whole attempt: fetch and upload (agent/partlock.py).
    with partlock.hold(dest, image["id"]):
        try:
            report = _report(*_overlapped(job, progress, phase))
        finally:
            if relays:  # the copy is over: a follower still reading holds its open file
                cache.unrelay(image["id"])
    report["fetched_from"] = served[-1] if served else None
    report["cached"] = cache is not None and cache.holds(image["id"])
    return report


def _overlapped(job: pipeline.Copy, progress: ProgressFn, phase: PhaseFn) -> tuple[check.Digest, str]:
    """pipeline.copy, resuming a ``.part`` that an attempt now over left, and starting afresh if that was bad.

    Under the lock, a ``.part`` found here was written by an attempt that is over
    (ended, killed, its machine restarted).  Its bytes are hashed (and uploaded)
    again before the rest is fetched; if the whole then fails verification, the
    fault may be in what that attempt left (a write cut short by a crash), so the
    file, already removed by the check, is fetched once more from its first byte
    before the attempt fails.  The aborted upload left the regional image queued.
    """
    leftover = os.path.exists(job.dest)
    try:
        return pipeline.copy(job, progress, phase)
    except VerificationError as exc:
        if not leftover or not exc.retryable:
            raise
        LOG.warning("image %s: the .part left by an earlier attempt did not verify (%s); fetching it afresh",
                    job.image["id"], exc)
    return pipeline.copy(job, progress, phase)


def _share(task: dict[str, Any], client: Any, endpoint: str, region: str) -> dict[str, Any]:
    """Apply the members a task carries (only a shared image's tasks carry them)."""
    if task.get("members") is None:
        return {}
    changed = apply.apply_members(client, task["image_id"], task["members"], endpoint)
    if changed:
        LOG.info("image %s members in %s: %s", task["image_id"], region, changed)
    return changed


def _dispatch(task: dict[str, Any], settings: WorkerSettings, progress: ProgressFn, phase: PhaseFn,
              cancelled: threading.Event | None) -> dict:
    region = settings.store_map.region(settings.region)
    endpoint = region.glance.url or settings.region
    if cancelled is None:
        client = glance.make_client(region.glance)
    else:  # an agent thread: no request once the task is cancelled (agent/runners.py)
        sess = runners.cancellable(glance.make_session(region.glance), cancelled, task["task_id"])
        client = glance.make_client(region.glance, sess)
    kind = task["kind"]
    if kind == "copy":
        report = _copy(task, settings, client, progress, phase)
        _share(task, client, endpoint, settings.region)
        return report
    if kind == "update":
        image = dict(task["image"], id=task["image_id"])
        changed = apply.apply_update(client, image, endpoint)
        changed.update(_share(task, client, endpoint, settings.region))
        LOG.info("image %s updated in %s: %s", task["image_id"], settings.region, changed or "nothing to change")
        return _done()
    if kind == "delete":
        part = transfer.part_path(region.work_dir, task["image_id"])
        # A copy attempt still running would upload after the delete: wait for it.
        with partlock.hold(part, task["image_id"]):
            apply.apply_delete(client, task["image_id"], part, endpoint)
        cache = settings.cache()
        if cache is not None:  # nothing of a deleted image is served any more
            cache.remove(task["image_id"])
        return _done()
    return {"outcome": "failed", "reason": f"unknown task kind {kind!r}", "retryable": False}


def run_task(task: dict[str, Any], settings: WorkerSettings, progress: ProgressFn,
             phase: PhaseFn | None = None, cancelled: threading.Event | None = None) -> dict[str, Any]:
    """Run one task to its result dict; never raises.

    ``progress(done, total)`` reports bytes of the current phase, which a copy
    names through ``phase(name)`` first (agent/pipeline.py: fetching, uploading,
    registering).
    """
    started = time.monotonic()
    try:
        result = _dispatch(task, settings, progress, phase or _no_phase, cancelled)
    except GlanceSyncError as exc:
        result = {"outcome": "failed", "reason": failure_reason(str(exc)), "retryable": exc.retryable}
    except Exception as exc:  # a bug or an unexpected library error: report it, let the coordinator retry
        # Library messages may quote request headers or auth bodies: no traceback
        # text of theirs goes to the log unmasked.
        reason = failure_reason(f"unexpected {type(exc).__name__}: {exc}")
        LOG.error("task %s failed unexpectedly: %s", task.get("task_id"), reason)
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("task %s: %s", task.get("task_id"), redact("".join(traceback.format_exception(exc))))
        result = {"outcome": "failed", "reason": reason, "retryable": True}
    if result["outcome"] == "done":
        result["elapsed"] = time.monotonic() - started
    return result


def run_inline(task: dict[str, Any], settings: WorkerSettings, cancelled: threading.Event) -> dict[str, Any]:
    """What an agent thread runs for an update or a delete (they report no progress)."""
    return run_task(task, settings, lambda done, total: None, cancelled=cancelled)


def _no_phase(_name: str) -> None:
    pass


def worker_main(task: dict[str, Any], settings: WorkerSettings, queue: Any) -> None:
    """Entry point of a worker process."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_worker_logging(settings.log_options)
    task_id = task["task_id"]
    throttle = ProgressThrottle(lambda done, total, phase: queue.put(("progress", task_id, done, total, phase)),
                                settings.progress_interval)
    queue.put(("result", task_id, run_task(task, settings, throttle, throttle.enter)))
