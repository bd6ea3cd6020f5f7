"""``glance-sync-coordinator``: load the configuration, check the journal and the cascading
credentials' admin role (admincheck.py), run until SIGTERM.

SIGHUP re-reads the CURVE allow-list (``[curve] allowed_clients_dir``) without a restart.

With ``[coordinator] pair = True`` it waits, passive, for the leader lease before it binds
anything (leadership.py), and exits with status 3 when it loses the lease.  The passive
one serves ``/metrics`` and ``/healthz`` already (503, "passive: ..."), so that a monitor
sees it alive and tells the standby from the active one.
"""

from __future__ import annotations

import gc
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from oslo_log import log as logging

from coordinator import admincheck, manage
from coordinator.clock import SteadyClock
from coordinator.glanceprocs import ClientSpec, WorkerProcesses
from coordinator.journal import Journal
from coordinator.leadership import LOST_EXIT, Leadership
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
    check_options(conf, stores)
    if not journal_ready(conf):
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    name = endpoint.url or "cascading glance"
    stats = coordinator_metrics(conf, name)
    try:
        # Up before the admin check, which may wait long: /healthz says 503 and why until the loop runs.
        server = metrics.serve(conf.coordinator, stats.registry(), stats.health)
        if not credentials_checked(endpoint, name, stop):
            return 0
    except ConfigError as exc:
        LOG.error("cannot start: %s", exc)
        return 1
    try:
        service = build(conf, stores, endpoint, regions, stats, stop)
        return 0 if service is None else run(service, stop)
    finally:
        if server is not None:
            server.close()


def coordinator_metrics(conf: Any, name: str) -> CoordinatorMetrics:
    """The coordinator's series, saying until its loop runs that it checks the credentials (not leading)."""
    stats = CoordinatorMetrics(metrics.Health(conf.coordinator.healthz_max_loop_age))
    stats.pair = conf.coordinator.pair  # leader 0 until the lease is taken
    stats.health.not_started(f"checking that the cascading credentials are admin in {name}")
    return stats


def credentials_checked(endpoint: Any, name: str, stop: threading.Event) -> bool:
    """Wait until the cascading credentials are known to be admin (True), or ``stop`` is set (False)."""
    client = glance.make_client(endpoint)
    return admincheck.wait_until_checked(lambda: admincheck.check(client, name), stop, name)


def check_options(conf: Any, stores: storemap.StoreMap) -> None:
    """The options that name regions or pace the lease, checked; one line and exit 2 for a bad one."""
    try:
        rules = strategy.parse_rules(conf.sync_user_rules, stores.regions)
    except ValueError as exc:  # a rule naming an unknown region: one line, as for any bad option
        config.fail(PROG, f"configuration error: {exc}", code=2)
    for name in conf.snapshot_region_names:
        why = strategy.problem(name, stores.regions)
        if why is not None:  # a typo would silently keep snapshots from a region
            config.fail(PROG, f"configuration error: snapshot_region_names: {why}", code=2)
    LOG.info("sync_strategy in force: %s", strategy.describe(strategy.canonical(conf.sync_strategy), rules))
    c = conf.coordinator
    if c.pair and c.leader_renew_interval > c.leader_lease_time / 2:
        config.fail(PROG, f"configuration error: [coordinator] leader_renew_interval ({c.leader_renew_interval:g}) "
                    f"must be at most half of leader_lease_time ({c.leader_lease_time:g})", code=2)


def journal_ready(conf: Any) -> bool:
    """The journal answers and its schema is current; else one error line (False)."""
    try:
        current, head = manage.schema_revisions(conf.database.connection, conf.database)
    except Exception as exc:  # an unreachable or unreadable database
        LOG.error("cannot start: journal not readable: %s", type(exc).__name__)
        return False
    if current != head:
        LOG.error("cannot start: journal schema is at %s, not %s; run 'glance-sync-manage db_sync'",
                  current, head)
        return False
    return True


def build(conf: Any, stores: storemap.StoreMap, endpoint: Any, regions: Any, stats: CoordinatorMetrics,
          stop: threading.Event) -> Service | None:
    """The service, with its registrar and journal; in a pair once the lease is taken (None: stopped meanwhile)."""
    name = endpoint.url or "cascading glance"
    processes = None
    if conf.coordinator.glance_worker_mode == "processes":
        spec = ClientSpec(endpoint, {region: stores.region(region).glance for region in stores.regions}, name)
        processes = WorkerProcesses(spec.clients, start=conf.coordinator.glance_workers)
    registrar = Registrar(lambda: glance.make_client(endpoint), conf.coordinator.glance_workers, name,
                          regional_client_factory=lambda region: glance.make_client(stores.region(region).glance),
                          processes=processes)
    journal = Journal(conf.database.connection, conf.database)
    leadership = _leadership(conf, journal, stop, stats)
    if leadership is False:  # stopped while passive
        journal.close()
        registrar.shutdown()
        return None
    service = Service(conf, stores, journal, registrar, metrics=stats, regions=regions, leadership=leadership)
    signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
    return service


def run(service: Service, stop: threading.Event) -> int:
    """Run the service until ``stop`` or a lost lease; the exit status (LOST_EXIT for the latter)."""
    # What start-up made (modules, configuration, SQLAlchemy's tables: about 125,000 objects)
    # lives as long as the process: out of the collector's full passes, which otherwise cost
    # about 70 ms of CPU each and stalled the loop several times a minute (doc/status.md).
    gc.collect()
    gc.freeze()
    failed: GlanceSyncError | None = None
    try:
        service.run(stop)
    except GlanceSyncError as exc:  # a socket that cannot bind, a key that does not load, the journal
        failed = exc
        _check_lease(service)
    finally:
        service.journal.close()
    leadership = service.leadership
    lost = None if leadership is None else leadership.lost or service.journal.fence_broken
    if lost is not None:
        LOG.error("coordinator stopped: leader lease lost (%s)", lost)
        return LOST_EXIT
    if failed is not None:
        LOG.error("cannot start: %s", failed)
        return 1
    LOG.info("coordinator stopped")
    return 0


def _check_lease(service: Service) -> None:
    """After a failure, let the fence say whether the lease is still ours.

    A pair's coordinator frozen while it started can wake to a journal session the
    server ended: the error it then meets is the lost lease's doing, and its exit status
    must say so (LOST_EXIT), not that it could not start.
    """
    leadership = service.leadership
    if leadership is None or not leadership.held:
        return
    try:
        service.journal.leader_row()  # a top-level transaction: its fence check marks a lost lease
    except GlanceSyncError:
        pass  # lost (fence_broken says so) or unreadable: either way the failure stands as it is


def _leadership(conf: Any, journal: Journal, stop: threading.Event,
                stats: CoordinatorMetrics) -> Leadership | None | bool:
    """None without a pair; with one, the lease once taken (passive until then); False when stopped meanwhile."""
    c = conf.coordinator
    if not c.pair:
        return None
    if journal.engine.dialect.name == "sqlite":
        LOG.warning("pair = True on an SQLite journal: both coordinators must share its file; a pair "
                    "belongs on PostgreSQL or MariaDB (doc/database.md)")
    leadership = Leadership(journal, c.leader_lease_time, c.leader_renew_interval)
    stats.leadership = leadership  # /metrics shows the passive one as such while it waits
    stats.health.not_started(f"passive: waiting for the leader lease ({leadership.holder})")
    return leadership if leadership.wait(stop, SteadyClock().now) else False


if __name__ == "__main__":
    sys.exit(main())
