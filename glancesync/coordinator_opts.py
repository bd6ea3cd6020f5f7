"""The options of the coordinator: ``[coordinator]`` and ``[database]`` (oslo.db's standard ones).

Registered and listed through :mod:`glancesync.opts`, which owns every group.
"""

from __future__ import annotations

import copy

from oslo_config import cfg
from oslo_db import options as db_options

coordinator_opts = [
    cfg.HostAddressOpt(
        "bind_host",
        default="127.0.0.1",
        help="Address the coordinator binds its client and agent sockets to. Use 0.0.0.0 or a "
        "routable address only with [curve] enabled = True.",
    ),
    cfg.PortOpt("agent_port", default=9596, help="Port of the socket agents connect to."),
    cfg.FloatOpt(
        "heartbeat_interval",
        default=5.0,
        min=0.1,
        help="Seconds between heartbeats to agents. An agent silent for three intervals is offline.",
    ),
    cfg.FloatOpt(
        "lease_timeout",
        default=60.0,
        min=1.0,
        help="Seconds a task stays with an agent that has gone silent before it returns to its "
        "region's queue. Any message from the agent renews its leases.",
    ),
    cfg.FloatOpt(
        "retry_backoff",
        default=5.0,
        min=0.0,
        help="Seconds before the first retry of a failed task; doubled on each further retry.",
    ),
    cfg.FloatOpt(
        "max_retry_backoff",
        default=300.0,
        min=0.0,
        help="Upper bound, in seconds, of the wait between two retries of a task.",
    ),
    cfg.FloatOpt(
        "registration_retry_backoff",
        default=5.0,
        min=0.1,
        help="Seconds before a failed location registration is tried again; doubled on each "
        "further failure up to max_registration_retry_backoff. A registration runs after the "
        "agent's copy is done: it reads the cascading and the regional image, verifies the copy "
        "and adds its location to the cascading image. When that fails for a reason that may "
        "pass (the cascading glance-api restarting, a timeout), the regional copy is kept and "
        "only the registration is retried, apart from task_retry_times; a verification that "
        "finds other bytes ends it at once.",
    ),
    cfg.FloatOpt(
        "max_registration_retry_backoff",
        default=3600.0,
        min=0.1,
        help="Upper bound, in seconds, of the wait between two tries of a failing location "
        "registration.",
    ),
    cfg.FloatOpt(
        "registration_retry_horizon",
        default=86400.0,
        min=0.0,
        help="Seconds a location registration keeps being retried, counted from its first "
        "failure; once over, the (image, region) is marked failed with the last error. The "
        "default (a day) rides out a rolling restart or a long outage of the cascading "
        "glance without throwing away finished copies.",
    ),
    cfg.IntOpt(
        "glance_workers",
        default=4,
        min=1,
        help="Threads for glance API calls (location registration, image lookups), so the poll "
        "loop never waits on HTTP. With glance_worker_mode = processes, also the number of "
        "worker processes (one per thread). Related options: glance_worker_mode.",
    ),
    cfg.StrOpt(
        "glance_worker_mode",
        default="processes",
        choices=[
            ("processes", "each of the glance_workers threads hands its glance calls to a worker "
             "process of its own, which builds its own glance clients from this configuration; the "
             "HTTP and JSON work of registrations, image fetches and location removals then runs "
             "outside the coordinator's process and no longer slows its poll loop"),
            ("threads", "the glance calls run in the glance_workers threads of the coordinator's "
             "own process, sharing the poll loop's interpreter lock (one process fewer per worker, "
             "for small sites)"),
        ],
        help="Where the coordinator's glance calls run. A worker process that dies (killed, out of "
        "memory) fails the call it was running as retryable, so that registration is tried again "
        "with its backoff, and the next call starts a new worker (after one that ended by itself "
        "before a first job, such as a broken install, only after 1, 2, 4... up to 60 s); workers log through the "
        "coordinator's own log and stop with it. The reconciler's pass always runs in a thread. "
        "Measurements: doc/control-plane.md. Related options: glance_workers.",
    ),
    cfg.IntOpt(
        "reconcile_interval",
        default=600,
        min=0,
        help="Seconds between two passes of the reconciler, which lists the cascading glance "
        "and makes the events that never arrived: an active image the journal has never heard "
        "of is synced, one deleted unseen (404) is removed from the regions, within "
        "reconcile_max_deletes and reconcile_max_delete_percent. The first pass runs at "
        "most 60 s after start. 0 disables it.",
    ),
    cfg.FloatOpt(
        "reconcile_failed_retry_interval",
        default=3600.0,
        min=0.0,
        help="Seconds after which the reconciler copies a failed (image, region) again (the slow "
        "schedule for failures that may have passed: a region that was full, a glance that "
        "refused for a while). A failure that cannot pass fails again and waits again. Also the "
        "wait before a region whose copy was deleted, and that is a target again, is tried again: "
        "its glance refuses the id until an operator purges it there. 0: failed and deleted "
        "regions wait for 'glance-sync-manage resync'. Related options: reconcile_interval.",
    ),
    cfg.IntOpt(
        "reconcile_max_deletes",
        default=10,
        min=0,
        help="Safety limit of the reconciler: a pass that finds more images than this gone from "
        "the cascading glance deletes the regional copies of none of them and holds them until "
        "an operator runs 'glance-sync-manage reconcile --confirm-deletes' (a cascading database "
        "restored from an old backup or a wrong endpoint looks like many deletes at once). "
        "Deletes announced by glance_proxy events are not limited. The same limit applies, on its "
        "own, to a pass's removals of copies in regions the strategy no longer targets (none is "
        "removed past it). 0 disables this limit. "
        "Related options: reconcile_max_delete_percent.",
    ),
    cfg.FloatOpt(
        "reconcile_max_delete_percent",
        default=10.0,
        min=0.0,
        max=100.0,
        help="Safety limit of the reconciler, as a share of the images that have regional copies: "
        "a pass that finds more than this percentage of them gone deletes none and holds them "
        "for 'glance-sync-manage reconcile --confirm-deletes'. Also applies to removals of "
        "copies the strategy no longer targets. In a small deployment a single "
        "lost delete can pass it; that is on purpose. 0 disables this limit. "
        "Related options: reconcile_max_deletes.",
    ),
    cfg.IntOpt(
        "max_sessions_per_key",
        default=16,
        min=1,
        help="With [curve] enabled: most agent sessions one agent key may hold. At the bound the "
        "offline session heard from longest ago is dropped to make room; when all are online, a "
        "further hello is refused (error too_many_sessions), so a flood of made-up agents costs "
        "nothing lasting. Related options: max_sessions_per_region.",
    ),
    cfg.IntOpt(
        "max_sessions_per_region",
        default=64,
        min=1,
        help="Most agent sessions of one region, online or offline, with or without CURVE. At the "
        "bound offline sessions are dropped first; with only online ones a further hello is "
        "refused (error too_many_sessions). Related options: max_sessions_per_key.",
    ),
    cfg.HostAddressOpt(
        "metrics_bind_host",
        default="127.0.0.1",
        help="Address of the coordinator's HTTP endpoint for Prometheus (/metrics) and health checks "
        "(/healthz). The endpoint has no authentication: bind a routable address only on a "
        "network where the metrics may be read. Related options: metrics_port.",
    ),
    cfg.PortOpt(
        "metrics_port",
        default=0,
        help="Port of the coordinator's /metrics and /healthz endpoint; 0 (the default) serves none. "
        "9597 is the port this project suggests for the coordinator (9598 for agents). A port that "
        "cannot be bound stops the coordinator from starting. "
        "Related options: metrics_bind_host, healthz_max_loop_age (doc/metrics.md).",
    ),
    cfg.FloatOpt(
        "healthz_max_loop_age",
        default=15.0,
        min=1.0,
        help="Seconds since the coordinator's poll loop last iterated after which /healthz answers 503 "
        "instead of 200. A healthy loop iterates several times a second; the default equals "
        "three heartbeat intervals, the window in which a peer would judge the coordinator gone.",
    ),
    cfg.StrOpt(
        "region_source",
        default="config",
        choices=[("config", "every region of glance_store.yaml is synced"),
                 ("catalog", "the regions with an image endpoint in the keystone catalog are synced")],
        help="Where the coordinator learns which regions to sync. 'config': the regions of "
        "glance_store.yaml. 'catalog': the regions that have an image-service endpoint in the "
        "keystone catalog of the [cascading_glance] credentials (which must then be keystone "
        "credentials), re-read every catalog_refresh_interval seconds; the cascading glance's own "
        "endpoint is never taken for a region. A region is synced only when it is in both: "
        "glance_store.yaml still holds each region's credentials, and a catalog region missing "
        "there, or a glance_store.yaml region missing from the catalog, is logged and not synced. "
        "A region that appears later gets the existing images from the reconciler (doc/regions.md). "
        "Related options: catalog_interface, catalog_refresh_interval.",
    ),
    cfg.StrOpt(
        "catalog_interface",
        default="public",
        choices=["public", "internal", "admin"],
        help="With region_source = catalog: the interface of the image endpoints read from the "
        "catalog, and compared with the cascading glance's endpoint to leave that one out.",
    ),
    cfg.FloatOpt(
        "catalog_refresh_interval",
        default=300.0,
        min=1.0,
        help="With region_source = catalog: seconds between two reads of the keystone catalog. A "
        "read that fails keeps the regions of the last good read. A region added to the catalog "
        "is synced from the next read on.",
    ),
    cfg.BoolOpt(
        "pair",
        default=False,
        help="Run as one of an active/passive pair of coordinators sharing one journal on a "
        "database server ([database] connection on PostgreSQL or MariaDB). The coordinator "
        "then acts only while it holds the leader lease kept in the journal: until it takes it "
        "(passive), it binds no socket, starts no reconciler and registers nothing, and only "
        "tries to take the lease every leader_renew_interval; once it holds it, it binds its "
        "sockets and starts like a coordinator after a restart. An active coordinator that "
        "cannot renew the lease before it expires, or finds that another one took it, stops "
        "acting at once and exits with status 3 (its supervisor starts it again, as a passive "
        "one). Both coordinators of a pair need the same options (ports, CURVE key pair, "
        "allowed_clients_dir, glance_store.yaml); agents and senders list both addresses. "
        "False (the default): one coordinator, no lease, nothing changes.",
    ),
    cfg.FloatOpt(
        "leader_lease_time",
        default=15.0,
        min=1.0,
        help="With pair = True: seconds the leader lease lasts after each renewal. The passive "
        "coordinator takes over at most this long, plus one leader_renew_interval, after the "
        "active one stopped renewing (a crash, a lost host, a process frozen mid-transaction: "
        "on PostgreSQL and MariaDB the pair's database sessions end an idle transaction or a "
        "lock wait after leader_lease_time - leader_renew_interval seconds, doc/database.md). "
        "It must exceed the worst clock "
        "skew between the two hosts (keep both on NTP) plus the longest loop iteration.",
    ),
    cfg.FloatOpt(
        "leader_renew_interval",
        default=5.0,
        min=0.1,
        help="With pair = True: seconds between two renewals of the leader lease by the active "
        "coordinator, and between two tries to take it by the passive one. At most half of "
        "leader_lease_time (a third by default), so that one failed renewal (the database "
        "briefly unreachable) does not cost the lease.",
    ),
    cfg.IntOpt(
        "max_source_fanout",
        default=0,
        min=0,
        help="Copies of one image that any one source serves at a time: the cascading store, "
        "and each region whose agent keeps verified copies in its cache (a peer: entry in "
        "glance_store.yaml, [agent] cache_dir). Each image is then distributed as a tree: the "
        "store serves the first copies, the regions that hold a verified copy serve the next "
        "ones, and the store stays the last fallback of each copy, so the cascading site sends "
        "an image about max_source_fanout times instead of once per region. A copy whose "
        "sources are all busy waits in its queue. 0 (the default): no limit, every region "
        "fetches at once, from the store unless a region already holds the image "
        "(doc/peers.md).",
    ),
    cfg.BoolOpt(
        "chain_sources",
        default=True,
        help="Let a region whose own copy of an image is still running serve it to the next "
        "region: its agent relays the prefix it has received while it receives the rest, so "
        "with max_source_fanout copies per source the regions form chains and every region "
        "gets the image in about one transfer time instead of log2(regions) + 1. A running "
        "copy is chosen only when the store and every region holding the image are at their "
        "fanout, and only from agents that announce it (a cache_dir on the work_dir's file "
        "system). Every byte is verified against the cascading image whatever its source, and "
        "a source that stops falls back to the next (at last the store), keeping the bytes "
        "already received. Has no effect with max_source_fanout = 0 (doc/peers.md).",
    ),
]

DEFAULT_CONNECTION = "sqlite:////var/lib/glance-sync/journal.sqlite"

CONNECTION_HELP = (
    "SQLAlchemy URL of the coordinator's journal. SQLite (the default; WAL mode, every commit "
    "fsynced) serves one coordinator on one node. PostgreSQL "
    "(postgresql+psycopg2://USER:PASSWORD@HOST/DB) or MariaDB/MySQL "
    "(mysql+pymysql://USER:PASSWORD@HOST/DB?charset=utf8mb4) serve a coordinator pair on a "
    "database server. Create or upgrade the schema with 'glance-sync-manage db_sync' "
    "(doc/database.md)."
)

SQLITE_SYNCHRONOUS_HELP = (
    "SQLite journal only. True: every commit is fsynced (synchronous=FULL), so an acknowledged "
    "event or report survives a power cut. False: no fsync at all (synchronous=OFF); a crash of "
    "the host may lose or corrupt the journal. Keep True outside throw-away test setups."
)


def _database_opts() -> list[cfg.Opt]:
    """oslo.db's standard [database] options, with the journal's default connection."""
    opts = copy.deepcopy(db_options.database_opts)
    for opt in opts:
        if opt.dest == "connection":
            opt.default = DEFAULT_CONNECTION
            opt.help = CONNECTION_HELP
        elif opt.dest == "sqlite_synchronous":
            opt.help = SQLITE_SYNCHRONOUS_HELP
    return opts


# Pool sizes, connection retries at start, sqlite_synchronous, mysql_sql_mode...: all
# of oslo.db's [database] options, read by coordinator/journal/engine.py.
database_opts = _database_opts()
