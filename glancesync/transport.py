"""zmq sockets set up the same way everywhere: size limit, linger, CurveZMQ when enabled.

``addresses`` and ``Failover``: the list of coordinators a client tries, in turn (a pair).
Role-named constructors: ``bind_server`` for the coordinator's ROUTER sockets,
``connect_client`` for agents, the event sender and the status tool.  With
``[curve] enabled`` a server authenticates clients against the allow-list of
glancesync.roles and a client pins the coordinator's public key; without it,
binding anything but a loopback address is refused, because plain zmq would accept
any peer.  ``peer_key`` reads the ZAP User-Id (the sender's z85 public key) off a
received frame, which is how the coordinator knows a message's role.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import zmq

from glancesync import keys, protocol, roles
from glancesync.exceptions import ConfigError


def tcp_endpoint(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def addresses(entries: list[str] | None, host: str, port: int) -> list[tuple[str, int]]:
    """The coordinators to try, in order: ``host:port`` entries (``[v6]:port`` too), or ``[(host, port)]``.

    Entries are checked by the option's own type (``ADDRESS_REGEX``) when the config is read;
    a port out of range here is a ConfigError.
    """
    found = []
    for entry in entries or []:
        name, _, number = entry.strip().rpartition(":")
        if not name or not number.isdigit() or not 0 < int(number) < 65536:
            raise ConfigError(source="coordinator address", detail=f"{entry[:80]!r} is not host:port")
        found.append((name.strip("[]"), int(number)))
    return found or [(host, port)]


class Failover:
    """The coordinator addresses of a pair (or one), and which one a client uses now.

    Only the active coordinator of a pair binds its sockets, so a client that hears
    nothing from the current address moves to the next (``advance``), round and round:
    back to the first once the last one fell silent too.
    """

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.index = 0

    @property
    def current(self) -> tuple[str, int]:
        return self.targets[self.index]

    def advance(self) -> bool:
        """Move to the next address; True when that starts a new round (every one was tried)."""
        self.index = (self.index + 1) % len(self.targets)
        return self.index == 0

    def __str__(self) -> str:
        host, port = self.current
        return tcp_endpoint(host, port)[len("tcp://"):]


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


def connect_client(context: zmq.Context, sock_type: int, host: str, port: int, conf: Any,
                   secret_key_file: str | None = None) -> zmq.Socket:
    """A connected client socket, pinning the coordinator's key when CURVE is on.

    ``secret_key_file`` overrides ``[curve] secret_key_file`` (the status tool's own key).
    """
    curve = conf.curve
    if curve.enabled:
        public, secret = keys.load_secret(secret_key_file or curve.secret_key_file or "")
        server_key = keys.load_public(curve.server_public_key_file or "")
    sock = context.socket(sock_type)
    _common(sock)
    if curve.enabled:
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = server_key
    sock.connect(tcp_endpoint(host, port))
    return sock


def start_server_auth(context: zmq.Context, conf: Any) -> roles.ClientAuth | None:
    """Start the CURVE allow-list (with roles) for a server context; None when CURVE is off."""
    if not conf.curve.enabled:
        return None
    return roles.ClientAuth(context, conf.curve.allowed_clients_dir or "")


def peer_key(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of a received frame (a CURVE client's z85 public key); None without one."""
    try:
        user_id = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None
    if isinstance(user_id, bytes):
        user_id = user_id.decode("ascii", "replace")
    return user_id or None
