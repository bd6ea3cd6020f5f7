"""``glance-sync-agent``: the agent of one region, run until SIGTERM or SIGINT.

The first signal drains: running transfers get ``[agent] stop_grace`` seconds to
finish, the rest is handed back to the coordinator in the ``bye``; a second signal
stops at once (unfinished work is still handed back).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

from agent import budget, ratelimit, runners, transfer
from agent.pool import Pool
from agent.service import AgentService
from agent.task import WorkerSettings, logging_options, run_inline, worker_main
from glancesync import config, metrics, storemap
from glancesync.exceptions import ConfigError

PROG = "glance-sync-agent"
LOG = logging.getLogger(__name__)


def _one_line(message: str) -> str:
    """A multi-line library message (a YAML parser's) folded into one line."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def _check_work_dir(work_dir: str, what: str = "work_dir") -> None:
    """Create the region's work_dir (or cache_dir) now; refuse to start when it cannot hold files."""
    try:
        os.makedirs(work_dir, exist_ok=True)
    except OSError as exc:
        config.fail(PROG, f"{what} {work_dir}: {exc.strerror}")
    if not os.access(work_dir, os.W_OK | os.X_OK):
        config.fail(PROG, f"{what} {work_dir}: not writable by this user")


# Task kinds an agent thread runs under worker_mode = pool: a few glance calls each.
INLINE_KINDS = frozenset({"update", "delete"})


def build_pool(mode: str, workers: int, timeout: float, settings: WorkerSettings,
               work_dir: str | None = None, max_copies: int = 0) -> Pool:
    """The pool of ``[agent] worker_mode`` (agent/runners.py); ``work_dir`` holds the ``.part`` files."""
    if mode == "spawn":
        return Pool(workers, timeout, worker_main, settings, context=runners.context("spawn"), work_dir=work_dir,
                    max_copies=max_copies)
    pool = Pool(workers, timeout, worker_main, settings, context=runners.context(mode), work_dir=work_dir,
                inline=run_inline, inline_kinds=INLINE_KINDS, max_copies=max_copies)
    runners.prestart(pool.ctx)  # before the session starts: its imports never stall the loop
    return pool


def copy_slots(agent: Any) -> int:
    """Copies the agent runs at once: ``max_concurrent_copies``, 0 meaning (and at most) ``workers``."""
    wanted = agent.max_concurrent_copies
    return min(wanted, agent.workers) if wanted > 0 else agent.workers


def fetch_options(agent: Any, work_dir: str | None = None) -> transfer.FetchOptions:
    """How every copy of this agent fetches: method, idle timeout, and ``max_bandwidth``, shared by all
    the copies through the budget file in ``work_dir`` (agent/budget.py)."""
    cap = ratelimit.cap_bytes(agent.max_bandwidth)
    return transfer.FetchOptions(method=transfer.resolve_method(agent.fetch_method),
                                 idle_timeout=float(agent.transfer_idle_timeout),
                                 follow_start_timeout=float(agent.follow_start_timeout),
                                 window_bytes=ratelimit.window(agent.paramiko_window_mib * 1024 * 1024, cap),
                                 rate_limit=cap, budget_file=budget.budget_path(work_dir) if cap and work_dir else "")


def catch_signals() -> list[int]:
    """The signals received so far (SIGTERM, SIGINT), appended by their handler."""
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return stopping


def load_region(conf: Any) -> tuple[str, storemap.StoreMap, str]:
    """This agent's region, its glance_store.yaml view and work_dir, checked; one line and exit 1 if not."""
    region = conf.agent.region
    if not region:
        config.fail(PROG, "[agent] region is required")
    try:
        # Only this region's glance (and glance_file) is read: another region's
        # credentials need not, and should not, be on this host.
        store_map = storemap.load(conf.glance_store_config, storemap.Role.AGENT, region)
        work_dir = str(store_map.region(region).work_dir)
    except ConfigError as exc:
        config.fail(PROG, _one_line(str(exc)))
    _check_work_dir(work_dir)
    if conf.agent.cache_dir:
        _check_work_dir(conf.agent.cache_dir, "[agent] cache_dir")
    return region, store_map, work_dir


def start_pool(conf: Any, region: str, store_map: storemap.StoreMap, work_dir: str,
               fetch: transfer.FetchOptions) -> Pool:
    """The worker pool of this region's agent; one line and exit 1 when no process can be started."""
    settings = WorkerSettings(store_map=store_map, region=region, progress_interval=conf.agent.progress_interval,
                              fetch=fetch, log_options=logging_options(conf), cache_dir=conf.agent.cache_dir,
                              cache_max_bytes=conf.agent.cache_max_bytes)
    try:
        pool = build_pool(conf.agent.worker_mode, conf.agent.workers, float(conf.scp_copy_timeout), settings,
                          work_dir, copy_slots(conf.agent))
    except OSError as exc:  # no process could be started (fd or memory exhaustion)
        config.fail(PROG, f"cannot start the worker pool: {exc}")
    return pool


def start_service(conf: Any, pool: Pool) -> tuple[AgentService, Any]:
    """The agent service and its /metrics endpoint (None when not configured), initialized."""
    try:
        service = AgentService(conf, pool)
        server = metrics.serve(conf.agent, service.metrics.registry(), service.metrics.health)
        service.initialize(time.monotonic())
    except ConfigError as exc:
        pool.shutdown()
        config.fail(PROG, _one_line(str(exc)))
    return service, server


def run_until_stopped(service: Any, stopping: list[int], stop_grace: float) -> None:
    """Step the service until a signal drained it or a second one came; it is shut down either way."""
    try:
        while len(stopping) < 2:
            now = time.monotonic()
            if stopping:
                service.stop(now, stop_grace)
                if service.drained(now):
                    break
            try:
                service.step(now)
            except Exception:  # one bad iteration must not end the agent
                LOG.exception("agent loop iteration failed")
                time.sleep(1.0)
    finally:
        service.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: a SIGTERM during start-up (systemd, a test on a busy machine) must
    # still stop the agent cleanly, not kill it half-started.
    stopping = catch_signals()
    conf = config.load(argv, PROG)
    region, store_map, work_dir = load_region(conf)
    fetch = fetch_options(conf.agent, work_dir)
    pool = start_pool(conf, region, store_map, work_dir, fetch)
    service, server = start_service(conf, pool)
    LOG.info("agent of region %s running %d task(s) at once, %d of them copies (worker_mode %s); %s", region,
             conf.agent.workers, copy_slots(conf.agent), conf.agent.worker_mode,
             f"fetches capped at {conf.agent.max_bandwidth:g} Mbit/s in all, shared by the copies fetching "
             f"({fetch.budget_file})" if fetch.rate_limit else "no bandwidth cap")
    try:
        run_until_stopped(service, stopping, conf.agent.stop_grace)
    finally:
        if server is not None:
            server.close()
    LOG.info("agent of region %s stopped (signal %s)", region, stopping[0] if stopping else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
