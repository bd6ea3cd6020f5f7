"""``glance-sync-agent``: the agent of one region, run until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence

from agent.pool import Pool
from agent.service import AgentService
from agent.task import WorkerSettings, logging_options, worker_main
from glancesync import config, storemap
from glancesync.exceptions import ConfigError

PROG = "glance-sync-agent"
LOG = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    conf = config.load(argv, PROG)
    region = conf.agent.region
    if not region:
        config.fail(PROG, "[agent] region is required")
    try:
        store_map = storemap.load(conf.glance_store_config)
        store_map.region(region)
    except ConfigError as exc:
        config.fail(PROG, str(exc))
    settings = WorkerSettings(store_map=store_map, region=region, progress_interval=conf.agent.progress_interval,
                              log_options=logging_options(conf))
    pool = Pool(conf.agent.workers, float(conf.scp_copy_timeout), worker_main, settings)
    try:
        service = AgentService(conf, pool)
        service.initialize(time.monotonic())
    except ConfigError as exc:
        pool.shutdown()
        config.fail(PROG, str(exc))

    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.info("agent of region %s running with %d worker(s)", region, conf.agent.workers)
    try:
        while not stopping:
            try:
                service.step(time.monotonic())
            except Exception:  # one bad iteration must not end the agent
                LOG.exception("agent loop iteration failed")
                time.sleep(1.0)
    finally:
        service.shutdown()
    LOG.info("agent of region %s stopped (signal %s)", region, stopping[0] if stopping else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
