"""glancesync.transport: socket setup, the loopback rule, and CURVE authentication end to end."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from oslo_config import cfg

from glancesync import keys, opts, protocol, transport
from glancesync.exceptions import ConfigError

# Long enough for a CURVE handshake on loopback, short enough to keep the suite fast.
SHORT = 1500


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_conf(**curve: Any) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    for name, value in curve.items():
        conf.set_override(name, value, group="curve")
    return conf


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_tcp_endpoint() -> None:
    assert transport.tcp_endpoint("127.0.0.1", 9595) == "tcp://127.0.0.1:9595"
    assert transport.tcp_endpoint("::1", 9595) == "tcp://[::1]:9595"
    assert transport.tcp_endpoint("[::1]", 9595) == "tcp://[::1]:9595"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "glance.example.com"])
def test_non_loopback_bind_without_curve_is_refused(context: zmq.Context, host: str) -> None:
    with pytest.raises(ConfigError) as info:
        transport.bind_server(context, zmq.ROUTER, host, free_port(), make_conf())
    assert "curve" in str(info.value)


def test_plain_loopback_round_trip(context: zmq.Context) -> None:
    conf = make_conf()
    port = free_port()
    server = transport.bind_server(context, zmq.ROUTER, "127.0.0.1", port, conf)
    client = transport.connect_client(context, zmq.DEALER, "localhost", port, conf)
    assert server.getsockopt(zmq.MAXMSGSIZE) == protocol.MAX_MESSAGE_BYTES
    assert client.getsockopt(zmq.LINGER) == 0
    client.send(protocol.encode("heartbeat"))
    assert server.poll(SHORT)
    identity, frame = server.recv_multipart()
    assert protocol.decode(frame).type == "heartbeat"
    server.close()
    client.close()


def test_bind_on_a_taken_port_is_a_config_error(context: zmq.Context) -> None:
    conf = make_conf()
    port = free_port()
    first = transport.bind_server(context, zmq.ROUTER, "127.0.0.1", port, conf)
    with pytest.raises(ConfigError) as info:
        transport.bind_server(context, zmq.ROUTER, "127.0.0.1", port, conf)
    assert str(port) in str(info.value)
    first.close()


def test_oversized_frame_never_reaches_the_server(context: zmq.Context) -> None:
    conf = make_conf()
    port = free_port()
    server = transport.bind_server(context, zmq.ROUTER, "127.0.0.1", port, conf)
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(transport.tcp_endpoint("127.0.0.1", port))
    client.send(b"x" * (protocol.MAX_MESSAGE_BYTES + 1))
    assert not server.poll(500)
    server.close()
    client.close()


@pytest.fixture
def curve_world(tmp_path: Path) -> dict[str, str]:
    """Keys of a coordinator, an allowed client, an unknown client and an impostor server."""
    allowed = tmp_path / "allowed"
    paths: dict[str, str] = {"allowed_dir": str(allowed)}
    for name in ("server", "client", "stranger", "impostor"):
        public, secret = keys.generate(str(tmp_path / name), name)
        paths[f"{name}_public"], paths[f"{name}_secret"] = public, secret
    (allowed / "status").mkdir(parents=True)
    (allowed / "status" / "client.key").write_text(Path(paths["client_public"]).read_text())
    return paths


def _curve_exchange(world: dict[str, str], client_secret: str, pinned_server: str) -> bool:
    """True when a CURVE client's request reaches the coordinator and its reply comes back."""
    server_ctx, client_ctx = zmq.Context(), zmq.Context()
    server_conf = make_conf(enabled=True, secret_key_file=world["server_secret"],
                            allowed_clients_dir=world["allowed_dir"])
    client_conf = make_conf(enabled=True, secret_key_file=client_secret, server_public_key_file=pinned_server)
    auth = transport.start_server_auth(server_ctx, server_conf)
    try:
        port = free_port()
        # CURVE makes a routable bind acceptable; 127.0.0.1 keeps the test local.
        server = transport.bind_server(server_ctx, zmq.ROUTER, "127.0.0.1", port, server_conf)
        client = transport.connect_client(client_ctx, zmq.DEALER, "127.0.0.1", port, client_conf)
        client.send(protocol.encode("status_query", {"view": "summary"}))
        if not server.poll(SHORT):
            return False
        identity, frame = server.recv_multipart(copy=False)
        assert protocol.decode(frame.bytes).type == "status_query"
        # The ZAP User-Id names the key: the coordinator finds its role from it.
        assert auth.peer(transport.peer_key(frame)).name == "status/client.key"
        server.send_multipart([identity, protocol.encode("status_reply", {"view": "summary", "data": {}})])
        assert client.poll(SHORT)
        assert protocol.decode(client.recv()).type == "status_reply"
        return True
    finally:
        auth.stop()
        server_ctx.destroy(linger=0)
        client_ctx.destroy(linger=0)


def test_curve_allowed_client_talks(curve_world: dict[str, str]) -> None:
    assert _curve_exchange(curve_world, curve_world["client_secret"], curve_world["server_public"])


def test_curve_client_not_in_allow_list_gets_nothing(curve_world: dict[str, str]) -> None:
    assert not _curve_exchange(curve_world, curve_world["stranger_secret"], curve_world["server_public"])


def test_curve_client_with_wrong_server_key_gets_nothing(curve_world: dict[str, str]) -> None:
    assert not _curve_exchange(curve_world, curve_world["client_secret"], curve_world["impostor_public"])


def test_curve_remote_bind_is_allowed(context: zmq.Context, curve_world: dict[str, str]) -> None:
    conf = make_conf(enabled=True, secret_key_file=curve_world["server_secret"])
    sock = transport.bind_server(context, zmq.ROUTER, "0.0.0.0", free_port(), conf)
    assert sock.getsockopt(zmq.CURVE_SERVER) == 1
    sock.close()


def test_curve_without_allow_list_does_not_start(context: zmq.Context, tmp_path: Path) -> None:
    conf = make_conf(enabled=True, allowed_clients_dir=str(tmp_path))
    with pytest.raises(ConfigError):
        transport.start_server_auth(context, conf)


def test_no_authenticator_without_curve(context: zmq.Context) -> None:
    assert transport.start_server_auth(context, make_conf()) is None


def test_a_frame_without_curve_has_no_peer_key(context: zmq.Context) -> None:
    conf = make_conf()
    port = free_port()
    server = transport.bind_server(context, zmq.ROUTER, "127.0.0.1", port, conf)
    client = transport.connect_client(context, zmq.DEALER, "127.0.0.1", port, conf)
    client.send(protocol.encode("heartbeat"))
    assert server.poll(SHORT)
    assert transport.peer_key(server.recv_multipart(copy=False)[-1]) is None
    server.close()
    client.close()


def test_coordinator_addresses_default_to_the_single_one_and_go_round() -> None:
    assert transport.addresses([], "10.0.0.9", 9595) == [("10.0.0.9", 9595)]
    pair = transport.addresses(["ctl-a.example.com:9595", "[fd00::2]:9595"], "ignored", 1)
    assert pair == [("ctl-a.example.com", 9595), ("fd00::2", 9595)]
    failover = transport.Failover(pair)
    assert str(failover) == "ctl-a.example.com:9595"
    assert failover.advance() is False and str(failover) == "[fd00::2]:9595"
    assert failover.advance() is True and failover.current == pair[0]  # a new round: back to the first
    with pytest.raises(ConfigError):
        transport.addresses(["host:99999"], "h", 1)
