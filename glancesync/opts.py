"""Every configuration option of the Glance Sync Manager, grouped, with full help.

Nothing is registered at import time: a service calls ``register_opts(conf)`` on
its own ``ConfigOpts``, so tests never share global state.  ``list_opts()`` feeds
``oslo-config-generator --namespace glancesync`` (see etc/oslo-config-generator/).

The first options keep the names and meaning they had in the original Tricircle
glancesync (``sync_enabled``, ``sync_server_host``, ``sync_server_port``,
``sync_strategy``, ``snapshot_*``, ``task_retry_times``, ``scp_copy_timeout``).
The option lists of the coordinator and the agent live in ``coordinator_opts`` and
``agent_opts``; this module registers and lists every group.
"""

from __future__ import annotations

import copy

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg, types

from glancesync import strategy
from glancesync.agent_opts import ADDRESS_REGEX, agent_opts
from glancesync.coordinator_opts import coordinator_opts, database_opts

SYNC_STRATEGIES = strategy.CHOICES

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
    cfg.ListOpt(
        "sync_servers",
        default=[],
        item_type=types.String(regex=ADDRESS_REGEX),
        help="The client sockets of an active/passive pair of coordinators, as host:port "
        "([v6addr]:port for IPv6), in order of preference: glance_proxy sends events to the "
        "first, and to the next one when an event gets no answer within its ack timeout (only "
        "the active coordinator of a pair binds its sockets), going round the list. Both "
        "coordinators use the same CURVE key pair ([curve] server_public_key_file names its "
        "public half). Empty (the default): sync_server_host:sync_server_port only.",
    ),
    cfg.StrOpt(
        "sync_strategy",
        default="ALL",
        ignore_case=True,
        choices=[
            ("None", "Sync nothing; events are journaled but make no tasks."),
            ("ALL", "Sync every image to every region in glance_store.yaml."),
            ("USER", "Sync only images whose owner asked for it (image property glance_sync_regions) "
             "or whose owner's project has a rule in sync_user_rules."),
            ("ON_DEMAND", "Sync nothing until an operator asks: 'glance-sync-manage sync IMAGE --regions "
             "A,B'. Updates and deletes still reach the regions that hold a copy."),
            ("nova", "The original project's name for copying on demand: the same as ON_DEMAND."),
        ],
        help="Which images go to which regions. Any case is accepted (the original's None, All, "
        "User). The original default was None; ALL is the default here because an operator "
        "installs the sync manager to have images synced. Changing it applies to the events "
        "planned from then on.",
    ),
    cfg.DictOpt(
        "sync_user_rules",
        default={},
        help="With sync_strategy USER: declarative rules, owner project id to regions, as "
        "PROJECT_ID:RegionA;RegionB,OTHER_PROJECT:RegionC. An image owned by such a project goes to "
        "the rule's regions and to those its glance_sync_regions property names. Region names are "
        "exact (case matters); an unknown one stops the coordinator at start with one line. No "
        "code is evaluated.",
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
        help="Seconds the coordinator waits for a snapshot (its image in the region that made it) "
        "or an imported image to become active, counted from the event; past it the regions "
        "still waiting for a copy are failed with that reason. The wait never blocks other "
        "events: the image is fetched again every snapshot_sleep_interval.",
    ),
    cfg.IntOpt(
        "snapshot_sleep_interval",
        default=10,
        min=1,
        help="Seconds between two reads of a snapshot's regional image (or an imported image) "
        "that is not active yet. Related options: snapshot_timeout.",
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
        help="Regions a snapshot is synced to: a cascading image whose bytes are in the region "
        "that made it (only cascaded://<region>/<id> locations, no file:// one). The region that "
        "made it always keeps it. Empty: the sync_strategy decides. A name that is not a "
        "region of glance_store.yaml stops the coordinator at start. The bytes are read from the region that made the snapshot, never from "
        "the cascading store (doc/snapshots.md). Related options: snapshot_timeout, "
        "snapshot_sleep_interval.",
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
    cfg.IntOpt(
        "outage_warning_after",
        default=60,
        min=1,
        help="Seconds without an ack from the coordinator, while events wait in the outbox, after "
        "which each worker's sender logs one WARNING in glance-api's (or glance-sync-proxy's) log, "
        "then one reminder every 5 minutes while the silence lasts and one INFO line when acks "
        "resume. Shorter silences are retried quietly (doc/outbox.md).",
    ),
    cfg.StrOpt(
        "metrics_textfile",
        help="A .prom file where the event sender (in glance-api or glance-sync-proxy) writes the "
        "depth of its outbox every 15 s, for node_exporter's textfile collector: put it in the "
        "directory named by node_exporter's --collector.textfile.directory, writable by glance. "
        "Unset (the default): no file. Series: doc/metrics.md.",
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
    for opt in [*default_opts[:4], internal_secret_opt]:  # sync_enabled to sync_servers
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
