"""The options of the agent: ``[agent]``.

Registered and listed through :mod:`glancesync.opts`, which owns every group.
"""

from __future__ import annotations

import socket

from oslo_config import cfg, types

from glancesync import protocol

# One coordinator address of a list: host:port, or [IPv6]:port (glancesync.transport.addresses).
ADDRESS_REGEX = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$"

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
    cfg.ListOpt(
        "coordinators",
        default=[],
        item_type=types.String(regex=ADDRESS_REGEX),
        help="The agent sockets of an active/passive pair of coordinators, as host:port "
        "([v6addr]:port for IPv6), in order of preference. The agent connects to the first; when "
        "the coordinator it talks to falls silent for three heartbeat intervals it reconnects to "
        "the next one (only the active coordinator of a pair binds its sockets), going round the "
        "list. Both coordinators use the same CURVE key pair ([curve] server_public_key_file "
        "names its public half). Empty (the default): coordinator_host:coordinator_port only.",
    ),
    cfg.IntOpt(
        "workers",
        default=2,
        min=1,
        max=protocol.MAX_CAPACITY,
        help="How many tasks this agent runs at once (copies in worker processes, updates and "
        f"deletes in threads with worker_mode = pool). At most {protocol.MAX_CAPACITY}, the "
        "largest capacity the coordinator accepts from one agent.",
    ),
    cfg.StrOpt(
        "worker_mode",
        default="pool",
        choices=[
            ("pool", "A fork server started once with the task modules imported forks a fresh "
             "worker process for each copy (milliseconds instead of about 1.2 CPU-s of imports); "
             "update and delete tasks run in a thread of the agent and start no process."),
            ("spawn", "A new Python interpreter for every task, whatever its kind: the former "
             "behaviour, kept for comparison (bench/agent_pool.py) and as a fallback."),
        ],
        help="How the agent starts a task. Either way a worker process dies with the agent, a "
        "cancelled or overdue task is stopped, and no state passes from one task to the next "
        "(doc/performance.md, section Worker pool).",
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
        help="Seconds a copy may go without a new byte on either side: the fetch receiving none "
        "(it is killed), or the upload to the region's glance, which runs while the fetch does, "
        "sending none (waiting for the fetch, or glance taking none: the upload is cancelled). "
        "The task then fails, retryable (the .part is kept and resumed). The primary guard "
        "against a stalled transfer; scp_copy_timeout only caps a whole task.",
    ),
    cfg.IntOpt(
        "follow_start_timeout",
        default=30,
        min=1,
        help="Seconds a copy following another region's copy that is still arriving (chained "
        "distribution, doc/peers.md) waits for that region's file to appear at all, neither the "
        "finished file nor the relayed one. The upstream relays its file as soon as its own fetch "
        "starts, so a file that is not there after this long is taken as not coming (that copy has "
        "not started, failed, or cannot be relayed) and the next source is tried. Never longer "
        "than transfer_idle_timeout.",
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
    cfg.FloatOpt(
        "max_bandwidth",
        default=0.0,
        min=0.0,
        help="Cap, in Mbit/s (1,000,000 bit/s), on the bytes this agent fetches for its region, all "
        "its copies together and from any source (the cascading store, a peer region, a "
        "snapshot's region over SFTP or its glance API); 0 (the default) sets none. The cap is one "
        "budget shared by the copies fetching at the moment (a token bucket in "
        "<work_dir>/.bandwidth that every worker draws from): a copy alone gets all of it, copies "
        "side by side split it, and a copy that uploads, waits, ends or dies takes nothing. "
        "OpenSSH's sftp gets the whole cap (sftp -l) and is stopped while the budget is in debt; "
        "paramiko's reader and the glance download wait. Not capped: the upload to the region's "
        "own glance, and what this region's sshd serves to other regions from cache_dir. Several "
        "agents in one region with different work_dirs each have their own cap "
        "(doc/performance.md).",
    ),
    cfg.IntOpt(
        "max_concurrent_copies",
        default=0,
        min=0,
        max=protocol.MAX_CAPACITY,
        help="Copies this agent runs at once; 0 (the default) means as many as workers, the "
        "credits the agent offers the coordinator, which bound every kind of task together. A "
        "copy the coordinator sends beyond this number waits in the agent (holding its worker "
        "slot, its lease kept alive by the heartbeats) until a copy ends. Updates and deletes are "
        "not held back by it, but a waiting copy takes a worker slot: keep workers above this "
        "number to leave room for them. Values above workers count as workers. It does not "
        "divide max_bandwidth: the copies fetching share the whole cap.",
    ),
    cfg.HostAddressOpt(
        "metrics_bind_host",
        default="127.0.0.1",
        help="Address of the agent's HTTP endpoint for Prometheus (/metrics) and health checks "
        "(/healthz). The endpoint has no authentication: bind a routable address only on a "
        "network where the metrics may be read. Related options: metrics_port.",
    ),
    cfg.PortOpt(
        "metrics_port",
        default=0,
        help="Port of the agent's /metrics and /healthz endpoint; 0 (the default) serves none. "
        "9598 is the port this project suggests for an agent (9597 for the coordinator); two agents "
        "on one host need two ports. A port that cannot be bound stops the agent from starting. "
        "Related options: metrics_bind_host, healthz_max_loop_age (doc/metrics.md).",
    ),
    cfg.FloatOpt(
        "healthz_max_loop_age",
        default=15.0,
        min=1.0,
        help="Seconds since the agent's poll loop last iterated after which /healthz answers 503 "
        "instead of 200. A healthy loop iterates several times a second; the default equals "
        "three heartbeat intervals, the window in which a peer would judge the agent gone.",
    ),
    cfg.StrOpt(
        "cache_dir",
        help="Directory where the agent keeps the verified files of the copies it made, so that "
        "other regions fetch them from this region instead of the cascading store. A file "
        "enters only once its copy is complete and verified (fetch, upload and glance's own "
        "hashes). Serve it over SFTP with a confined read-only account of this region's sshd "
        "(ChrootDirectory its root-owned parent, ForceCommand internal-sftp -R) and describe "
        "that account in this region's peer: entry of glance_store.yaml (doc/peers.md). "
        "Unset (the default): no cache, this region never serves others. Related options: "
        "cache_max_bytes.",
    ),
    cfg.IntOpt(
        "cache_max_bytes",
        default=10 * 1024 ** 3,
        min=0,
        help="Upper bound, in bytes, of the files in cache_dir. Admitting a new file evicts the "
        "least recently used ones (admitted or served longest ago) to make room; a file being "
        "written, or being served to another region (the coordinator says which), is never "
        "evicted, and a file that does not fit is not admitted. Default 10 GiB.",
    ),
]
