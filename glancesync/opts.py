"""Every configuration option of the Glance Sync Manager, grouped, with full help.

Nothing is registered at import time: a service calls ``register_opts(conf)`` on
its own ``ConfigOpts``, so tests never share global state.  ``list_opts()`` feeds
``oslo-config-generator --namespace glancesync`` (see etc/oslo-config-generator/).

The first options keep the names and meaning they had in the original Tricircle
glancesync (``sync_enabled``, ``sync_server_host``, ``sync_server_port``,
``sync_strategy``, ``snapshot_*``, ``task_retry_times``, ``scp_copy_timeout``).
"""

from __future__ import annotations

import copy
import socket

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from glancesync import protocol

SYNC_STRATEGIES = ("None", "ALL", "USER")

default_opts = [
    cfg.BoolOpt(
        "sync_enabled",
        default=False,
        help="Whether the glancesync filter inside glance-api sends image events to the "
        "coordinator. When False the filter passes every request through untouched. "
        "glance-sync-proxy always sends events and does not read this option.",
    ),
    cfg.HostAddressOpt(
        "sync_server_host",
        default="127.0.0.1",
        help="Address of the coordinator's client socket, where glance_proxy sends image events "
        "and glance-sync-status sends queries. The coordinator binds it (see [coordinator] bind_host).",
    ),
    cfg.PortOpt(
        "sync_server_port",
        default=9595,
        help="Port of the coordinator's client socket (image events and status queries).",
    ),
    cfg.StrOpt(
        "sync_strategy",
        default="ALL",
        choices=[
            ("None", "Sync nothing; events are journaled but make no tasks."),
            ("ALL", "Sync every image to every region in glance_store.yaml."),
            ("USER", "Sync only images whose owner asked for it (image property glance_sync_regions)."),
        ],
        help="Which images go to which regions. The original default was None; ALL is the default "
        "here because an operator installs the sync manager to have images synced.",
    ),
    cfg.URIOpt(
        "cascading_endpoint_url",
        help="URL of the cascading glance-api, e.g. http://glance.example.com:9292. When unset, the "
        "catalog of the [cascading_glance] credentials is used.",
    ),
    cfg.IntOpt(
        "snapshot_timeout",
        default=300,
        min=1,
        help="Seconds the coordinator waits for a snapshot (or an imported image) to become active "
        "before the sync of that image fails.",
    ),
    cfg.IntOpt(
        "snapshot_sleep_interval",
        default=10,
        min=1,
        help="Seconds between two polls of an image that is not active yet.",
    ),
    cfg.IntOpt(
        "task_retry_times",
        default=5,
        min=0,
        help="How many times a failed retryable task is tried again, with exponential backoff, "
        "before its (image, region) is marked failed. The original default 0 lost work on the "
        "first network hiccup; 5 retries with backoff cover restarts of a region's glance "
        "or sshd while still surfacing persistent errors within minutes.",
    ),
    cfg.IntOpt(
        "scp_copy_timeout",
        default=3600,
        min=1,
        help="Total cap, in seconds, on one task of an agent (fetch and upload of an image): "
        "the worker is terminated and the task retried. A safety net only, generous enough for "
        "the largest image over the slowest link; a stalled transfer is caught much earlier by "
        "[agent] transfer_idle_timeout.",
    ),
    cfg.ListOpt(
        "snapshot_region_names",
        default=[],
        help="Regions a snapshot is synced to. Empty: the sync_strategy decides.",
    ),
    cfg.StrOpt(
        "glance_store_config",
        default="/etc/glance-sync/glance_store.yaml",
        help="Path of glance_store.yaml: the cascading store (ssh host, store directory) and each "
        "region's glance endpoint, credentials and working directory.",
    ),
]

internal_secret_opt = cfg.StrOpt(
    "sync_internal_secret_file",
    help="File holding the secret shared by the coordinator and glance_proxy (the glancesync filter "
    "in glance-api, or glance-sync-proxy). The coordinator signs each of its requests to the "
    "cascading glance with it (an HMAC in the X-Glance-Sync-Internal header), and glance_proxy "
    "makes no image event of a request whose signature is valid, so the coordinator's own "
    "location registrations do not come back to it as events. The file must be readable by its "
    "owner only (mode 0600) and hold at least 32 characters; make one with "
    "'glance-sync-manage gensecret --file F' and copy it to both hosts. Set it in glance-api.conf "
    "[DEFAULT] for the filter and in glance-sync.conf for the coordinator and glance-sync-proxy. "
    "Possible values: unset (default): the header is never trusted, every change makes an event "
    "and the coordinator's own registrations make locations_changed events that it plans "
    "nothing for; a path: requests signed with this secret within 300 seconds of the receiver's "
    "clock make no event. A file that is missing, too short or readable by others stops the "
    "coordinator and glance-sync-proxy at start; the filter then logs an error and trusts no "
    "header.",
)
default_opts.append(internal_secret_opt)

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
        "loop never waits on HTTP.",
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
    cfg.IntOpt(
        "reconcile_max_deletes",
        default=10,
        min=0,
        help="Safety limit of the reconciler: a pass that finds more images than this gone from "
        "the cascading glance deletes the regional copies of none of them and holds them until "
        "an operator runs 'glance-sync-manage reconcile --confirm-deletes' (a cascading database "
        "restored from an old backup or a wrong endpoint looks like many deletes at once). "
        "Deletes announced by glance_proxy events are not limited. 0 disables this limit. "
        "Related options: reconcile_max_delete_percent.",
    ),
    cfg.FloatOpt(
        "reconcile_max_delete_percent",
        default=10.0,
        min=0.0,
        max=100.0,
        help="Safety limit of the reconciler, as a share of the images that have regional copies: "
        "a pass that finds more than this percentage of them gone deletes none and holds them "
        "for 'glance-sync-manage reconcile --confirm-deletes'. In a small deployment a single "
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
]

database_opts = [
    cfg.StrOpt(
        "connection",
        default="sqlite:////var/lib/glance-sync/journal.sqlite",
        secret=True,
        help="SQLAlchemy URL of the coordinator's journal. SQLite (WAL mode) serves one "
        "coordinator; a MySQL or PostgreSQL URL serves an active/passive pair. Create or upgrade "
        "the schema with 'glance-sync-manage db_sync'.",
    ),
]

agent_opts = [
    cfg.StrOpt(
        "region",
        help="Name of the region this agent serves, as in glance_store.yaml. Required.",
    ),
    cfg.StrOpt(
        "agent_id",
        default=socket.gethostname(),
        sample_default="<hostname>",
        max_length=protocol.MAX_NAME,
        help="Name of this agent in status output; unique among the agents of a region. At most "
        f"{protocol.MAX_NAME} characters, no control characters.",
    ),
    cfg.HostAddressOpt(
        "coordinator_host",
        default="127.0.0.1",
        help="Address of the coordinator's agent socket.",
    ),
    cfg.PortOpt("coordinator_port", default=9596, help="Port of the coordinator's agent socket."),
    cfg.IntOpt(
        "workers",
        default=2,
        min=1,
        max=protocol.MAX_CAPACITY,
        help="Worker processes, i.e. how many tasks this agent runs at once. At most "
        f"{protocol.MAX_CAPACITY}, the largest capacity the coordinator accepts from one agent.",
    ),
    cfg.FloatOpt(
        "heartbeat_interval",
        default=5.0,
        min=0.1,
        help="Seconds between heartbeats to the coordinator. Three missed coordinator heartbeats "
        "make the agent reconnect.",
    ),
    cfg.FloatOpt(
        "reconnect_max_backoff",
        default=32.0,
        min=1.0,
        help="Upper bound, in seconds, of the jittered exponential wait between reconnects.",
    ),
    cfg.FloatOpt(
        "progress_interval",
        default=1.0,
        min=0.1,
        help="Seconds between two progress reports of a running transfer (also sent every 5%).",
    ),
    cfg.FloatOpt(
        "stop_grace",
        default=30.0,
        min=0.0,
        help="Seconds a stopping agent (SIGTERM) gives its running transfers to finish and their "
        "results to be acknowledged. It takes no new work meanwhile; what is still running when the "
        "time is up is terminated and handed back to the coordinator in the agent's bye, which "
        "requeues it without counting a retry. Keep it below the service manager's stop timeout "
        "(TimeoutStopSec=60s in the shipped systemd unit). A second signal stops at once.",
    ),
    cfg.StrOpt(
        "fetch_method",
        default="openssh",
        choices=[
            ("openssh", "OpenSSH's sftp client moves the bytes (about a third of paramiko's CPU); "
             "paramiko only checks the path first. Falls back to paramiko, with one warning at "
             "start, when no sftp binary is installed."),
            ("paramiko", "paramiko moves the bytes: pure Python, needs no OpenSSH client."),
        ],
        help="How the agent fetches image bytes from the cascading store. Both pin the host key "
        "to the store's known_hosts_file and use only its private_key_file (doc/performance.md).",
    ),
    cfg.IntOpt(
        "transfer_idle_timeout",
        default=300,
        min=5,
        help="Seconds a fetch may go without receiving a new byte before it is killed and the "
        "task fails, retryable (the .part is kept and resumed). The primary guard against a "
        "stalled transfer; scp_copy_timeout only caps a whole task.",
    ),
    cfg.IntOpt(
        "paramiko_window_mib",
        default=32,
        min=1,
        max=1024,
        help="SSH window, in MiB, of the paramiko fetch: at least the link's bandwidth-delay "
        "product (32 MiB keeps 1 Gbit/s busy over a 250 ms round trip). Unused with "
        "fetch_method = openssh, whose client sizes its own window.",
    ),
]

curve_opts = [
    cfg.BoolOpt(
        "enabled",
        default=False,
        help="Encrypt and authenticate every zmq socket with CurveZMQ. Required whenever the "
        "coordinator's sockets are reachable from another host.",
    ),
    cfg.StrOpt(
        "secret_key_file",
        help="This service's CurveZMQ secret key file (zmq.auth format, mode 0600).",
    ),
    cfg.StrOpt(
        "server_public_key_file",
        help="Clients (agents, glance_proxy, status): the coordinator's public key file, pinned.",
    ),
    cfg.StrOpt(
        "allowed_clients_dir",
        help="Coordinator: directory of the public key files of the clients allowed to connect; "
        "where a key sits is its role: agent/<region>/NAME.key (the agent of that region only), "
        "sender/NAME.key (glance_proxy event senders), status/NAME.key (glance-sync-status), "
        "operator/NAME.key (events and status). A key file directly in this directory stops the "
        "coordinator at start. Changes are picked up without a restart (see reload_interval, "
        "SIGHUP). See doc/keys-and-roles.md.",
    ),
    cfg.FloatOpt(
        "reload_interval",
        default=5.0,
        min=0.5,
        help="Coordinator: seconds between two checks of allowed_clients_dir for changed key "
        "files (a stat of its directories and keys); a change is applied at once, a removed "
        "key is refused for new connections and further messages. SIGHUP re-reads it at once.",
    ),
    cfg.StrOpt(
        "status_secret_key_file",
        help="glance-sync-status: the secret key file of its own status (or operator) key, when "
        "the config file it reads is a service's (whose secret_key_file is that service's key). "
        "Unset: secret_key_file. The --key-file argument overrides both.",
    ),
]

proxy_opts = [
    cfg.StrOpt(
        "spool_dir",
        default="/var/lib/glance-sync/spool",
        help="Directory of the event outbox: events wait there (fsync'd) until the coordinator "
        "acknowledges them. Every worker of a glance-api (or of glance-sync-proxy) keeps its events "
        "in its own locked subdirectory; the spools of stopped workers are adopted and sent by a "
        "live one. Give each glance-api or proxy its own directory on a local file system "
        "(doc/outbox.md).",
    ),
    cfg.IntOpt(
        "spool_max_bytes",
        default=64 * 1024 * 1024,
        min=1024,
        help="Largest size of the outbox in bytes: of all event files in spool_dir together, "
        "whichever worker wrote them. When full, new events are dropped with one error log line "
        "each and the periodic reconciler repairs what they would have done.",
    ),
    cfg.IntOpt(
        "queue_size",
        default=10000,
        min=1,
        help="Events held in memory on their way to the outbox; the request path never waits on it.",
    ),
    cfg.HostAddressOpt("listen_host", default="127.0.0.1", help="glance-sync-proxy: address to listen on."),
    cfg.PortOpt("listen_port", default=9293, help="glance-sync-proxy: port to listen on."),
    cfg.URIOpt(
        "upstream_url",
        default="http://127.0.0.1:9292",
        help="glance-sync-proxy: URL of the glance-api it forwards to.",
    ),
]

GLANCE_GROUP = "cascading_glance"
glance_extra_opts = [
    cfg.DictOpt(
        "identity_headers",
        default={},
        help="Headers added to every request to the cascading glance, for a glance without "
        "keystone whose pipeline trusts identity headers (X-Identity-Status, X-Roles, ...). "
        "Leave empty with keystone.",
    ),
    cfg.StrOpt(
        "interface",
        default="public",
        help="Endpoint interface looked up in the keystone catalog when cascading_endpoint_url is unset.",
    ),
    cfg.StrOpt("region_name", help="Catalog region of the cascading glance."),
]

GROUPS = {
    "coordinator": coordinator_opts,
    "database": database_opts,
    "agent": agent_opts,
    "curve": curve_opts,
    "proxy": proxy_opts,
    GLANCE_GROUP: glance_extra_opts,
}


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register every option of the project on ``conf``."""
    conf.register_opts(default_opts)
    for group, opts in GROUPS.items():
        conf.register_opts(opts, group=group)
    ks_loading.register_session_conf_options(conf, GLANCE_GROUP)
    ks_loading.register_auth_conf_options(conf, GLANCE_GROUP)


def register_filter_opts(conf: cfg.ConfigOpts) -> None:
    """The few options glance_proxy's filter reads from glance-api.conf."""
    for opt in [*default_opts[:3], internal_secret_opt]:
        try:
            conf.register_opt(opt)
        except cfg.DuplicateOptError:
            pass
    conf.register_opts(curve_opts, group="curve")
    conf.register_opts(proxy_opts, group="proxy")


def _auth_opts() -> list[cfg.Opt]:
    opts = ks_loading.get_session_conf_options() + ks_loading.get_auth_common_conf_options()
    # Show the options of the plugins operators use with glance: password and none.
    for plugin in ("password", "v3applicationcredential"):
        opts += ks_loading.get_auth_plugin_conf_options(plugin)
    unique: dict[str, cfg.Opt] = {}
    for opt in opts:
        unique.setdefault(opt.dest, opt)
    return list(unique.values())


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Every option by group, for oslo-config-generator."""
    groups = [("DEFAULT", default_opts)]
    groups += [(name, opts) for name, opts in GROUPS.items() if name != GLANCE_GROUP]
    groups.append((GLANCE_GROUP, glance_extra_opts + _auth_opts()))
    return [(name, copy.deepcopy(opts)) for name, opts in groups]
