"""The coordinator's door with CURVE on: each key may send what its role allows, reloaded live."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import zmq

from coordinator.registrar import Registrar
from coordinator.service import Service
from glancesync import keys, protocol, roles

from .conftest import IMAGE_ID, NOW, FakeClient, free_port, make_conf
from .test_service import PATIENCE, pump, receive

SHORT = 2000


class Keys:
    """Key pairs under ``base/pairs``; public keys placed by role under ``base/allowed``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.allowed = base / "allowed"
        self.server_public, self.server_secret = keys.generate(str(base / "pairs"), "coordinator")

    def make(self, name: str, role: str | None = None, region: str | None = None) -> str:
        """A client pair; with ``role``, its public key on the allow-list. Returns the secret file."""
        public, secret = keys.generate(str(self.base / "pairs"), name)
        if role:
            target = Path(roles.key_path(str(self.allowed), role, name, region))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(public, target)
        return secret

    def revoke(self, name: str) -> None:
        for path in self.allowed.rglob(f"{name}.key"):
            os.unlink(path)


@pytest.fixture
def world(tmp_path: Path) -> Keys:
    world = Keys(tmp_path / "keys")
    for name, role, region in (("one", "agent", "RegionOne"), ("proxy", "sender", None),
                               ("reader", "status", None), ("admin", "operator", None)):
        world.make(name, role, region)
    return world


@pytest.fixture
def service(tmp_path, db_url, store_yaml, journal, stores, world, ctx):
    conf = make_conf(tmp_path, db_url, store_yaml, curve={
        "enabled": True, "secret_key_file": world.server_secret, "allowed_clients_dir": world.allowed,
        "reload_interval": 30})
    client = FakeClient()
    registrar = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=lambda _region: client)
    svc = Service(conf, stores, journal, registrar, context=ctx)
    svc.initialize(NOW)
    yield svc
    svc.shutdown()


def connect(ctx, service: Service, world: Keys, name: str, agent_socket: bool = False) -> zmq.Socket:
    public, secret = keys.load_secret(str(world.base / "pairs" / f"{name}.key_secret"))
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = keys.load_public(world.server_public)
    port = service.conf.coordinator.agent_port if agent_socket else service.conf.sync_server_port
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def no_answer(ctx, service: Service, world: Keys, name: str, now: float = NOW) -> bool:
    """True when a client with key ``name`` gets nothing back for a status query."""
    sock = connect(ctx, service, world, name)
    try:
        # A refused handshake may leave no pipe to queue on: then the send itself fails.
        sock.send(protocol.encode("status_query", {"view": "summary"}), zmq.NOBLOCK)
    except zmq.Again:
        return True
    pump(service, now)
    return not sock.poll(200)


def ask(sock: zmq.Socket, service: Service, msg_type: str, body: dict, now: float = NOW) -> protocol.Message:
    sock.send(protocol.encode(msg_type, body))
    return receive(sock, service, now)


def hello_body(region: str = "RegionOne", agent_id: str = "a1") -> dict:
    return {"region": region, "agent_id": agent_id, "capacity": 2, "version": "t", "in_flight": []}


EVENT = {"event_id": "e1", "kind": "uploaded", "image_id": IMAGE_ID}


def test_an_agent_key_may_say_hello_only_for_its_own_region(ctx, service, world, caplog) -> None:
    sock = connect(ctx, service, world, "one", agent_socket=True)
    reply = ask(sock, service, "hello", hello_body("RegionTwo"))
    assert reply.type == "error" and reply.body["code"] == "forbidden"
    assert "agent/RegionOne/one.key" in caplog.text and service.agents.sessions == {}
    assert ask(sock, service, "hello", hello_body("RegionOne")).type == "welcome"
    session = next(iter(service.agents.sessions.values()))
    assert session.key_name == "agent/RegionOne/one.key"


def test_only_agent_keys_are_served_on_the_agent_socket(ctx, service, world) -> None:
    sock = connect(ctx, service, world, "admin", agent_socket=True)
    reply = ask(sock, service, "hello", hello_body())
    assert reply.type == "error" and reply.body["code"] == "forbidden" and "operator" in reply.body["reason"]
    assert service.agents.sessions == {}


@pytest.mark.parametrize("name", ["reader", "one"])
def test_only_sender_and_operator_keys_may_send_events(ctx, service, world, journal, name, caplog) -> None:
    refused = ask(connect(ctx, service, world, name), service, "event", EVENT)
    assert refused.type == "error" and refused.body["code"] == "forbidden"
    assert journal.image_view(IMAGE_ID)[0] is False  # nothing journaled
    assert len([r for r in caplog.records if "event refused" in r.getMessage()]) == 1
    for allowed in ("proxy", "admin"):
        assert ask(connect(ctx, service, world, allowed), service, "event", EVENT).type == "event_ack"
    assert journal.image_view(IMAGE_ID)[0] is True


def test_status_is_for_status_and_operator_keys(ctx, service, world) -> None:
    query = {"view": "summary"}
    for name in ("reader", "admin"):
        assert ask(connect(ctx, service, world, name), service, "status_query", query).type == "status_reply"
    refused = ask(connect(ctx, service, world, "proxy"), service, "status_query", query)
    assert refused.type == "error" and refused.body["code"] == "forbidden"


def test_a_refusal_waits_behind_the_event_ack_of_its_connection(ctx, service, world, monkeypatch) -> None:
    sock = connect(ctx, service, world, "proxy")
    sock.send(protocol.encode("event", EVENT))
    sock.send(protocol.encode("status_query", {"view": "summary"}))  # a sender key may not ask
    pipe, real_recv, taken = service.client_sock, service.client_sock.recv, []

    def both_frames():
        # Both in one iteration, however late the second arrives: the order is decided within it.
        if len(taken) < 2:
            assert pipe.sock.poll(PATIENCE * 1000), "the frames did not reach the coordinator"
        got = real_recv()
        taken.append(got)
        return got

    monkeypatch.setattr(pipe, "recv", both_frames)
    service.loop(NOW, poll_seconds=PATIENCE)
    replies = []
    while len(replies) < 2 and sock.poll(PATIENCE * 1000):
        replies.append(protocol.decode(sock.recv()))
    assert [(m.type, m.body.get("code")) for m in replies] == [("event_ack", None), ("error", "forbidden")]


def test_a_key_not_on_the_list_gets_no_answer(ctx, service, world) -> None:
    world.make("stranger")
    assert no_answer(ctx, service, world, "stranger")


@pytest.mark.parametrize("how", ["sighup", "periodic"])
def test_a_revoked_key_is_refused_on_its_open_connection_and_new_ones(ctx, service, world, how) -> None:
    agent = connect(ctx, service, world, "one", agent_socket=True)
    assert ask(agent, service, "hello", hello_body()).type == "welcome"
    reader = connect(ctx, service, world, "reader")
    assert ask(reader, service, "status_query", {"view": "summary"}).type == "status_reply"
    world.revoke("one")
    world.revoke("reader")
    now = NOW + 1
    pump(service, now)
    assert ask(reader, service, "status_query", {"view": "summary"}, now).type == "status_reply"  # not yet read
    if how == "sighup":
        service.request_reload()
    else:
        now += service.conf.curve.reload_interval
    pump(service, now)
    assert not service.agents.online()  # the agent's session closed at once
    refused = ask(reader, service, "status_query", {"view": "summary"}, now)
    assert refused.type == "error" and refused.body["code"] == "forbidden"
    agent.send(protocol.encode("ready", {"credits": 1}))
    assert receive(agent, service, now, "error").body["code"] == "forbidden"
    assert no_answer(ctx, service, world, "reader", now)


def test_a_hello_for_a_region_not_in_the_store_map_is_refused(ctx, service, world) -> None:
    world.make("ghost", "agent", "RegionGhost")
    service.request_reload()
    pump(service, NOW)  # read before the handshake
    sock = connect(ctx, service, world, "ghost", agent_socket=True)
    reply = ask(sock, service, "hello", hello_body("RegionGhost"))
    assert reply.type == "error" and reply.body["code"] == "unknown_region"


def test_the_old_layout_stops_the_coordinator(tmp_path, db_url, store_yaml, journal, stores, world, ctx) -> None:
    shutil.copy(world.base / "pairs" / "one.key", world.allowed / "one.key")
    conf = make_conf(tmp_path, db_url, store_yaml, curve={
        "enabled": True, "secret_key_file": world.server_secret, "allowed_clients_dir": world.allowed},
        coordinator={"agent_port": free_port()})
    svc = Service(conf, stores, journal, Registrar(lambda: None, 1, "x", regional_client_factory=lambda _region: None), context=ctx)
    try:
        with pytest.raises(keys.KeyLoadError) as info:
            svc.initialize(NOW)
        assert "one.key" in str(info.value) and "move it" in str(info.value)
    finally:
        svc.shutdown()
