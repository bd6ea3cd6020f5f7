"""glance-sync-proxy: the standalone reverse proxy that emits image events.

    glance-sync-proxy --config-file /etc/glance-sync/glance-sync.conf

Listens on ``[proxy] listen_host:listen_port``, forwards to ``[proxy] upstream_url``
and sends image events to the coordinator at
``sync_server_host:sync_server_port`` through an on-disk outbox in ``[proxy] spool_dir``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from glance_proxy.proxy import ProxyServer, make_app
from glancesync import config
from glancesync.exceptions import ConfigError
from glancesync.transport import tcp_endpoint

PROG = "glance-sync-proxy"
# Two worker processes of 8 threads: the proxy only moves bytes, so a few
# processes saturate a link; each worker has its own locked directory in spool_dir.
WORKERS = 2


def _check_port_free(host: str, port: int) -> None:
    """One clear line for a port in use, instead of gunicorn's five retries and log lines."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        config.fail(PROG, f"[proxy] listen_host {host}: {exc}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            config.fail(PROG, f"cannot listen on {host}:{port} ([proxy] listen_host/listen_port): {exc.strerror}")


def main(argv: Sequence[str] | None = None) -> None:
    conf = config.load(argv, PROG)
    try:
        os.makedirs(conf.proxy.spool_dir, exist_ok=True)
    except OSError as exc:
        config.fail(PROG, f"[proxy] spool_dir {conf.proxy.spool_dir}: {exc.strerror}")
    _check_port_free(conf.proxy.listen_host, conf.proxy.listen_port)
    bind = tcp_endpoint(conf.proxy.listen_host, conf.proxy.listen_port).removeprefix("tcp://")
    try:
        app = make_app(conf)
    except ConfigError as exc:  # a loop-guard secret file that does not load
        config.fail(PROG, str(exc))
    ProxyServer(app, bind, workers=WORKERS).run()


if __name__ == "__main__":
    main()
