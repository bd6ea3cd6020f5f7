"""zmq sockets set up the same way everywhere: size limit, linger, CurveZMQ when enabled.

Role-named constructors: ``bind_server`` for the coordinator's ROUTER sockets,
``connect_client`` for agents, the event sender and the status tool.  With
``[curve] enabled`` a server authenticates clients against the allow-list and a
client pins the coordinator's public key; without it, binding anything but a
loopback address is refused, because plain zmq would accept any peer.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import zmq

from glancesync import keys, protocol
from glancesync.exceptions import ConfigError


def tcp_endpoint(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _common(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
    # Never block close() on undelivered frames: everything that matters is
    # journaled or spooled and will be sent again.
    sock.setsockopt(zmq.LINGER, 0)
    if hasattr(zmq, "IPV6"):
        sock.setsockopt(zmq.IPV6, 1)


def bind_server(context: zmq.Context, sock_type: int, host: str, port: int, conf: Any) -> zmq.Socket:
    """A bound server socket; ``conf`` is the service's ConfigOpts (uses ``[curve]``)."""
    curve = conf.curve
    if not curve.enabled and not _is_loopback(host):
        raise ConfigError(
            source="[coordinator] bind_host",
            detail=f"{host} is not a loopback address; enable [curve] to accept remote peers",
        )
    # Keys first: one that does not load must not leave a socket behind.
    secret = keys.load_secret(curve.secret_key_file or "")[1] if curve.enabled else None
    sock = context.socket(sock_type)
    _common(sock)
    if secret is not None:
        sock.curve_secretkey = secret
        sock.curve_server = True
    try:
        sock.bind(tcp_endpoint(host, port))
    except zmq.ZMQError as exc:
        sock.close()
        raise ConfigError(source=f"{host}:{port}", detail=f"cannot bind: {exc}") from None
    return sock


def connect_client(context: zmq.Context, sock_type: int, host: str, port: int, conf: Any) -> zmq.Socket:
    """A connected client socket, pinning the coordinator's key when CURVE is on."""
    curve = conf.curve
    if curve.enabled:
        public, secret = keys.load_secret(curve.secret_key_file or "")
        server_key = keys.load_public(curve.server_public_key_file or "")
    sock = context.socket(sock_type)
    _common(sock)
    if curve.enabled:
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = server_key
    sock.connect(tcp_endpoint(host, port))
    return sock


def start_server_auth(context: zmq.Context, conf: Any) -> Any:
    """Start the CURVE allow-list for a server context; None when CURVE is off."""
    if not conf.curve.enabled:
        return None
    return keys.start_authenticator(context, conf.curve.allowed_clients_dir or "")
