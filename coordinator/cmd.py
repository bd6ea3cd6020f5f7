"""``glance-sync-coordinator``: load the configuration, check the journal and the cascading
credentials' admin role (admincheck.py), run until SIGTERM.

SIGHUP re-reads the CURVE allow-list (``[curve] allowed_clients_dir``) without a restart.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence

from oslo_log import log as logging

from coordinator import admincheck, manage
from coordinator.journal import Journal
from coordinator.metrics import CoordinatorMetrics
from coordinator.regioncatalog import live_regions
from coordinator.registrar import Registrar, cascading_endpoint
from coordinator.service import Service
from glancesync import config, glance, metrics, storemap, strategy
from glancesync.exceptions import ConfigError, GlanceSyncError

PROG = "glance-sync-coordinator"
LOG = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    conf = config.load(argv, PROG)
    try:
        stores = storemap.load(conf.glance_store_config, storemap.Role.COORDINATOR)
        endpoint = cascading_endpoint(conf, stores)
        regions = live_regions(conf.coordinator, stores, endpoint)
    except ConfigError as exc:
        LOG.error("cannot start: %s", exc)
        return 1
    try:
        rules = strategy.parse_rules(conf.sync_user_rules, stores.regions)
    except ValueError as exc:  # a rule naming an unknown region: one line, as for any bad option
        config.fail(PROG, f"configuration error: {exc}", code=2)
    for name in conf.snapshot_region_names:
        why = strategy.problem(name, stores.regions)
        if why is not None:  # a typo would silently keep snapshots from a region
            config.fail(PROG, f"configuration error: snapshot_region_names: {why}", code=2)
    LOG.info("sync_strategy in force: %s", strategy.describe(strategy.canonical(conf.sync_strategy), rules))
    url = conf.database.connection
    try:
        current, head = manage.schema_revisions(url, conf.database)
    except Exception as exc:  # an unreachable or unreadable database
        LOG.error("cannot start: journal not readable: %s", type(exc).__name__)
        return 1
    if current != head:
        LOG.error("cannot start: journal schema is at %s, not %s; run 'glance-sync-manage db_sync'",
                  current, head)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    name = endpoint.url or "cascading glance"
    stats = CoordinatorMetrics(metrics.Health(conf.coordinator.healthz_max_loop_age))
    stats.health.not_started(f"checking that the cascading credentials are admin in {name}")
    try:
        # Up before the admin check, which may wait long: /healthz says 503 and why until the loop runs.
        server = metrics.serve(conf.coordinator, stats.registry(), stats.health)
        client = glance.make_client(endpoint)
        if not admincheck.wait_until_checked(lambda: admincheck.check(client, name), stop, name):
            return 0
    except ConfigError as exc:
        LOG.error("cannot start: %s", exc)
        return 1
    registrar = Registrar(lambda: glance.make_client(endpoint), conf.coordinator.glance_workers, name,
                          regional_client_factory=lambda region: glance.make_client(stores.region(region).glance))
    service = Service(conf, stores, Journal(url, conf.database), registrar, metrics=stats, regions=regions)
    signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
    try:
        service.run(stop)
    except GlanceSyncError as exc:  # a socket that cannot bind, a key that does not load, the journal
        LOG.error("cannot start: %s", exc)
        return 1
    finally:
        service.journal.close()
        if server is not None:
            server.close()
    LOG.info("coordinator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
