"""glancesync.protocol: every message type round-trips; every malformed frame is refused by name."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from glancesync import protocol
from glancesync.exceptions import ProtocolError

TASK_REF = {"task_id": "t-1", "attempt": 1}
IMAGE_ID = "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"

# One valid body per message type; the test below fails when a type is added
# to SCHEMAS without an example here.
VALID: dict[str, dict[str, Any]] = {
    "hello": {"region": "RegionOne", "agent_id": "a1", "capacity": 2, "version": "0.1.0", "in_flight": ["t-9"],
              "running": [{"task_id": "t-9", "attempt": 3}], "features": ["sources"]},
    "ready": {"credits": 2},
    "ack": dict(TASK_REF),
    "progress": {**TASK_REF, "bytes_done": 10, "bytes_total": 100, "phase": "uploading"},
    "done": {
        **TASK_REF,
        "size": 100,
        "checksum": "d41d8cd98f00b204e9800998ecf8427e",
        "os_hash_algo": "sha512",
        "os_hash_value": "ab" * 64,
        "region_hash_algo": "sha256",
        "region_hash_value": "cd" * 32,
        "elapsed": 1.5,
        "fetched_from": "RegionTwo",
        "cached": True,
    },
    "failed": {**TASK_REF, "reason": "sftp: connection reset", "retryable": True},
    "heartbeat": {"serving": [IMAGE_ID]},
    "bye": {"reason": "shutting down", "handed_back": [{"task_id": "t-9", "attempt": 3}]},
    "welcome": {"heartbeat_interval": 5.0, "lease_timeout": 60},
    "task": {
        **TASK_REF,
        "kind": "copy",
        "image_id": IMAGE_ID,
        "region": "RegionOne",
        "image": {"id": IMAGE_ID, "size": 100, "properties": {"a": "b"}},
        "source": {"type": "sftp", "path": f"/var/lib/glance/images/{IMAGE_ID}"},
        "sources": [{"type": "peer", "region": "RegionTwo"},
                    {"type": "sftp", "path": f"/var/lib/glance/images/{IMAGE_ID}"}],
        "members": [{"member_id": "0123abcd", "status": "pending"}],
    },
    "disconnect": {"reason": "coordinator restarting"},
    "result_ack": dict(TASK_REF),
    "cancel": {**TASK_REF, "reason": "attempt no longer current", "discard": True},
    "event": {
        "event_id": "e-1",
        "kind": "uploaded",
        "image_id": IMAGE_ID,
        "image": {"id": IMAGE_ID},
        "changes": ["name"],
        "context": {"user_id": "u", "project_id": "p", "roles": ["admin"]},
        "occurred_at": 1700000000.5,
    },
    "event_ack": {"event_id": "e-1"},
    "status_query": {"view": "image", "image_id": IMAGE_ID},
    "status_reply": {"view": "summary", "data": {"regions": {}}},
    "operator": {"action": "sync", "image_id": IMAGE_ID, "regions": ["RegionOne", "RegionTwo"]},
    "operator_reply": {"action": "cancel", "data": {"cancelled": []}},
    "error": {"code": "bad_field", "reason": "x", "ref": "m-1"},
}


def envelope(**overrides: Any) -> bytes:
    env: dict[str, Any] = {"v": protocol.VERSION, "type": "ready", "id": "m-1", "ts": 1.0, "body": {"credits": 1}}
    env.update(overrides)
    return msgpack.packb(env, use_bin_type=True)


def code_of(frame: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frame)
    return info.value.code


def test_every_schema_has_an_example() -> None:
    assert set(VALID) == set(protocol.SCHEMAS)


@pytest.mark.parametrize("msg_type", sorted(protocol.SCHEMAS))
def test_round_trip(msg_type: str) -> None:
    frame = protocol.encode(msg_type, VALID[msg_type], msg_id="abc")
    msg = protocol.decode(frame)
    assert msg.type == msg_type
    assert msg.id == "abc"
    assert msg.version == protocol.VERSION
    assert msg.ts > 0
    assert msg.body == VALID[msg_type]


def test_encode_gives_fresh_ids() -> None:
    first = protocol.decode(protocol.encode("heartbeat"))
    second = protocol.decode(protocol.encode("heartbeat"))
    assert first.id and second.id and first.id != second.id


def test_optional_fields_get_defaults() -> None:
    hello = protocol.decode(protocol.encode("hello", {"region": "R", "agent_id": "a", "capacity": 1, "version": "1"}))
    assert hello.body["in_flight"] == [] and hello.body["running"] == []
    done = protocol.decode(protocol.encode("done", TASK_REF))
    assert done.body["size"] is None and done.body["checksum"] is None and done.body["elapsed"] == 0.0
    # An agent from before region hashes: the fields read as absent.
    assert done.body["region_hash_algo"] is None and done.body["region_hash_value"] is None
    event = protocol.decode(protocol.encode("event", {"event_id": "e", "kind": "deleted", "image_id": IMAGE_ID}))
    assert event.body["changes"] == [] and event.body["context"] is None and event.body["occurred_at"] == 0.0
    assert protocol.decode(protocol.encode("bye")).body == {"reason": "", "handed_back": []}


def test_unknown_extra_fields_are_ignored() -> None:
    msg = protocol.decode(envelope(body={"credits": 3, "from_the_future": [1, 2]}, extra_envelope_key=1))
    assert msg.body == {"credits": 3}


def test_truncated_msgpack() -> None:
    frame = protocol.encode("ready", {"credits": 1})
    assert code_of(frame[:-3]) == "undecodable"


def test_garbage_bytes() -> None:
    assert code_of(b"\xc1\xc1\xc1") == "undecodable"


def test_not_a_map() -> None:
    assert code_of(msgpack.packb([1, "ready"])) == "bad_envelope"


@pytest.mark.parametrize("version", [2, 0, "1", None, True])
def test_wrong_version(version: Any) -> None:
    assert code_of(envelope(v=version)) == "version"


def test_unknown_type() -> None:
    assert code_of(envelope(type="launch_missiles")) == "unknown_type"
    with pytest.raises(ProtocolError) as info:
        protocol.encode("launch_missiles", {})
    assert info.value.code == "unknown_type"


@pytest.mark.parametrize(
    "overrides",
    [{"type": 7}, {"id": ""}, {"id": 5}, {"ts": "now"}, {"ts": True}, {"body": [1]}, {"body": None}],
)
def test_bad_envelope_fields(overrides: dict[str, Any]) -> None:
    assert code_of(envelope(**overrides)) == "bad_envelope"


def test_missing_field() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(envelope(type="failed", body={**TASK_REF, "reason": "x"}))
    assert info.value.code == "missing_field"
    assert "failed.retryable" in str(info.value)


@pytest.mark.parametrize(
    ("msg_type", "body", "field"),
    [
        ("ready", {"credits": "2"}, "credits"),
        ("ready", {"credits": True}, "credits"),
        ("ready", {"credits": 2.0}, "credits"),
        ("progress", {**TASK_REF, "bytes_done": True, "bytes_total": 5}, "bytes_done"),
        ("progress", {**TASK_REF, "bytes_done": 1, "bytes_total": 5, "phase": "dancing"}, "phase"),
        ("failed", {**TASK_REF, "reason": "x", "retryable": 1}, "retryable"),
        ("hello", {"region": "R", "agent_id": "a", "capacity": 1, "version": "1", "in_flight": "t"}, "in_flight"),
        ("task", {**VALID["task"], "image": ["not", "a", "map"]}, "image"),
    ],
)
def test_wrong_type(msg_type: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(envelope(type=msg_type, body=body))
    assert info.value.code == "bad_field"
    assert f"{msg_type}.{field}" in str(info.value)


@pytest.mark.parametrize(
    ("msg_type", "body", "field"),
    [
        ("hello", {"region": "R", "agent_id": "a", "capacity": 0, "version": "1"}, "capacity"),
        ("ready", {"credits": 0}, "credits"),
        ("task", {**VALID["task"], "kind": "move"}, "kind"),
        ("event", {"event_id": "e", "kind": "exploded", "image_id": IMAGE_ID}, "kind"),
        ("progress", {**TASK_REF, "bytes_done": -1, "bytes_total": 5}, "bytes_done"),
        ("ack", {"task_id": "t", "attempt": 0}, "attempt"),
        ("hello", {"region": "R", "agent_id": "a", "capacity": 1, "version": "1", "in_flight": [1]}, "in_flight"),
        ("status_query", {"view": "everything"}, "view"),
        ("task", {**VALID["task"], "members": [{"member_id": "p", "status": "maybe"}]}, "members"),
        ("task", {**VALID["task"], "members": [{"member_id": "p\x1b[2J", "status": "pending"}]}, "members"),
        ("task", {**VALID["task"], "members": ["p"]}, "members"),
    ],
)
def test_failed_value_check(msg_type: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(envelope(type=msg_type, body=body))
    assert info.value.code == "bad_field"
    assert f"{msg_type}.{field}" in str(info.value)


@pytest.mark.parametrize(
    ("msg_type", "body", "field"),
    [
        ("ack", {"task_id": "", "attempt": 1}, "task_id"),
        ("hello", {"region": "", "agent_id": "a", "capacity": 1, "version": "1"}, "region"),
        ("event_ack", {"event_id": ""}, "event_id"),
        ("task", {**VALID["task"], "image_id": ""}, "image_id"),
    ],
)
def test_empty_id(msg_type: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(envelope(type=msg_type, body=body))
    assert info.value.code == "bad_field"
    assert f"{msg_type}.{field}" in str(info.value)


def test_oversized_frame_is_refused_before_unpacking() -> None:
    frame = envelope(body={"credits": 1, "padding": "x" * protocol.MAX_MESSAGE_BYTES})
    assert len(frame) > protocol.MAX_MESSAGE_BYTES
    assert code_of(frame) == "oversized"


def test_oversized_message_is_not_encoded() -> None:
    body = {**VALID["task"], "image": {"blob": "x" * protocol.MAX_MESSAGE_BYTES}}
    with pytest.raises(ProtocolError) as info:
        protocol.encode("task", body)
    assert info.value.code == "oversized"


def test_encode_validates_too() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.encode("ready", {"credits": 0})
    assert info.value.code == "bad_field"


def test_error_reply_quotes_the_refused_message() -> None:
    exc = ProtocolError(code="bad_field", detail="ready.credits=0 is not positive")
    reply = protocol.decode(protocol.error_reply(exc, ref="m-7"))
    assert reply.type == "error"
    assert reply.body == {"code": "bad_field", "reason": "ready.credits=0 is not positive", "ref": "m-7"}


def test_cascaded_url() -> None:
    assert protocol.cascaded_url("RegionOne", "img-1") == "cascaded://RegionOne/img-1"


def test_sub_second_intervals_are_positive() -> None:
    # [coordinator] heartbeat_interval allows 0.1 s; the welcome carrying it must encode.
    body = {"heartbeat_interval": 0.5, "lease_timeout": 1.5}
    assert protocol.decode(protocol.encode("welcome", body)).body == body
    with pytest.raises(ProtocolError):
        protocol.encode("welcome", {"heartbeat_interval": 0.0, "lease_timeout": 1.0})


# -- identities, bounds and the null rule -----------------------------------------------

BAD_IMAGE_IDS = [
    "../../../../etc/passwd",
    f"../images/{IMAGE_ID}",
    f"{IMAGE_ID}/../../x",
    f"{IMAGE_ID}?all_stores=true",
    f"{IMAGE_ID}\n",
    IMAGE_ID.replace("-", ""),
    "img-1",
    "",
]


@pytest.mark.parametrize("bad", BAD_IMAGE_IDS)
@pytest.mark.parametrize(
    "msg_type", ["event", "task", "status_query"],
)
def test_image_ids_must_be_glance_ids(msg_type: str, bad: str) -> None:
    body = {**VALID[msg_type], "image_id": bad}
    assert code_of(envelope(type=msg_type, body=body)) == "bad_field"
    with pytest.raises(ProtocolError):
        protocol.encode(msg_type, body)


def test_upper_case_uuid_is_an_image_id() -> None:
    # Glance's schema accepts a user-given id in upper-case hex too.
    body = {**VALID["event"], "image_id": IMAGE_ID.upper()}
    assert protocol.decode(protocol.encode("event", body)).body["image_id"] == IMAGE_ID.upper()


HELLO = VALID["hello"]


@pytest.mark.parametrize(
    ("msg_type", "body", "field"),
    [
        ("hello", {**HELLO, "capacity": 10**9}, "capacity"),
        ("hello", {**HELLO, "capacity": protocol.MAX_CAPACITY + 1}, "capacity"),
        ("ready", {"credits": 10**9}, "credits"),
        ("ack", {"task_id": "t", "attempt": 2**31}, "attempt"),
        ("progress", {**TASK_REF, "bytes_done": 2**64 - 1, "bytes_total": 5}, "bytes_done"),
        ("progress", {**TASK_REF, "bytes_done": 5, "bytes_total": 2**63}, "bytes_total"),
        ("done", {**VALID["done"], "size": 2**64 - 1}, "size"),
        ("done", {**VALID["done"], "elapsed": float("inf")}, "elapsed"),
        ("welcome", {"heartbeat_interval": float("nan"), "lease_timeout": 1.0}, "heartbeat_interval"),
        ("event", {**VALID["event"], "occurred_at": float("inf")}, "occurred_at"),
        ("welcome", {"heartbeat_interval": 2**63, "lease_timeout": 1.0}, "heartbeat_interval"),
        ("failed", {**TASK_REF, "reason": "x" * (protocol.MAX_TEXT + 1), "retryable": True}, "reason"),
        ("hello", {**HELLO, "region": "R" * (protocol.MAX_NAME + 1)}, "region"),
        ("hello", {**HELLO, "agent_id": "a\x1b[2J"}, "agent_id"),
        ("hello", {**HELLO, "in_flight": ["t"] * (protocol.MAX_ITEMS + 1)}, "in_flight"),
        ("hello", {**HELLO, "in_flight": ["t" * (protocol.MAX_ID + 1)]}, "in_flight"),
        ("hello", {**HELLO, "running": [{"task_id": "t", "attempt": 0}]}, "running"),
        ("hello", {**HELLO, "running": [{"task_id": "t\x00", "attempt": 1}]}, "running"),
        ("hello", {**HELLO, "running": ["t"]}, "running"),
        ("bye", {"handed_back": [{"task_id": "t"}]}, "handed_back"),
        ("event", {**VALID["event"], "event_id": "e" * (protocol.MAX_ID + 1)}, "event_id"),
        ("event", {**VALID["event"], "changes": ["n" * (protocol.MAX_NAME + 1)]}, "changes"),
        ("ack", {"task_id": "t\x00", "attempt": 1}, "task_id"),
    ],
)
def test_every_count_size_and_string_is_bounded(msg_type: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(envelope(type=msg_type, body=body))
    assert info.value.code == "bad_field"
    assert f"{msg_type}.{field}" in str(info.value)


def test_largest_values_still_pass() -> None:
    body = {**TASK_REF, "bytes_done": protocol.MAX_SIZE, "bytes_total": protocol.MAX_SIZE}
    assert protocol.decode(protocol.encode("progress", body)).body["bytes_done"] == 2**63 - 1
    hello = {**HELLO, "capacity": protocol.MAX_CAPACITY}
    assert protocol.decode(protocol.encode("hello", hello)).body["capacity"] == 256


def test_null_is_absent_for_optional_fields() -> None:
    hello = protocol.decode(envelope(type="hello", body={**HELLO, "in_flight": None}))
    assert hello.body["in_flight"] == []
    event = protocol.decode(envelope(type="event", body={**VALID["event"], "changes": None, "occurred_at": None}))
    assert event.body["changes"] == [] and event.body["occurred_at"] == 0.0
    done = protocol.decode(envelope(type="done", body={**TASK_REF, "elapsed": None}))
    assert done.body["elapsed"] == 0.0
    assert protocol.decode(envelope(type="bye", body={"reason": None})).body == {"reason": "", "handed_back": []}


def test_null_is_kept_where_it_is_a_value() -> None:
    done = protocol.decode(envelope(type="done", body={**TASK_REF, "size": None, "checksum": None}))
    assert done.body["size"] is None and done.body["checksum"] is None
    task = protocol.decode(envelope(type="task", body={**VALID["task"], "source": None}))
    assert task.body["source"] is None
    query = protocol.decode(envelope(type="status_query", body={"view": "summary", "image_id": None}))
    assert query.body["image_id"] is None


@pytest.mark.parametrize(
    ("msg_type", "body", "field"),
    [
        ("ready", {"credits": None}, "credits"),
        ("task", {**VALID["task"], "image_id": None}, "image_id"),
        ("task", {**VALID["task"], "image": None}, "image"),
        ("failed", {**TASK_REF, "reason": "x", "retryable": None}, "retryable"),
    ],
)
def test_null_is_refused_for_required_fields(msg_type: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(envelope(type=msg_type, body=body))
    assert info.value.code == "missing_field"
    assert f"{msg_type}.{field} is null" in str(info.value)


def test_errors_quote_only_a_short_escaped_prefix() -> None:
    hostile = "\x1b]0;owned\x07" + "A" * 4000
    with pytest.raises(ProtocolError) as info:
        protocol.decode(envelope(type="event", body={**VALID["event"], "image_id": hostile}))
    assert len(str(info.value)) < 300
    assert "\x1b" not in str(info.value) and "\\x1b" in str(info.value)
    reply = protocol.error_reply(info.value, ref="m-1")
    assert len(reply) < 500
    with pytest.raises(ProtocolError) as info:
        protocol.decode(envelope(type="A" * 100_000))
    assert len(str(info.value)) < 300


def test_error_reply_never_raises_on_odd_content() -> None:
    exc = ProtocolError(code="x" * 1000, detail="\x00" * (protocol.MAX_TEXT * 3))
    reply = protocol.decode(protocol.error_reply(exc, ref="r" * 500))
    assert reply.body["ref"] is None and len(reply.body["reason"]) <= protocol.MAX_TEXT
    assert "\x00" not in reply.body["reason"]


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "image",
    [
        {"a": nested(protocol.MAX_DEPTH + 1)},
        {"blob": b"\x00\x01"},
        {"ext": msgpack.ExtType(5, b"x")},
    ],
)
def test_bodies_hold_plain_shallow_data_only(image: dict[str, Any]) -> None:
    assert code_of(envelope(type="task", body={**VALID["task"], "image": image})) == "bad_body"


def test_map_keys_must_be_strings() -> None:
    frame = msgpack.packb({"v": 1, "type": "task", "id": "m", "ts": 1.0,
                           "body": {**VALID["task"], "image": {b"raw": 1}}}, use_bin_type=True)
    assert code_of(frame) == "bad_body"


@pytest.mark.parametrize("overrides", [{"id": "i" * 65}, {"id": "m\n"}, {"ts": float("nan")}, {"ts": 2**64 - 1}])
def test_envelope_id_and_time_are_bounded(overrides: dict[str, Any]) -> None:
    assert code_of(envelope(**overrides)) == "bad_envelope"


def test_refused_report_names_the_task_of_a_bad_done() -> None:
    bad_done = envelope(type="done", body={**TASK_REF, "size": 2**64 - 1})
    assert code_of(bad_done) == "bad_field"
    assert protocol.refused_report(bad_done) == TASK_REF
    assert protocol.refused_report(envelope(type="progress", body={**TASK_REF, "bytes_done": -1})) is None
    assert protocol.refused_report(envelope(type="done", body={"task_id": "", "attempt": 1})) is None
    assert protocol.refused_report(b"\xc1") is None


def test_an_agent_cannot_be_configured_beyond_what_its_hello_may_carry() -> None:
    from oslo_config import cfg

    from glancesync import opts

    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("workers", protocol.MAX_CAPACITY, group="agent")
    assert conf.agent.workers == protocol.MAX_CAPACITY
    with pytest.raises(ValueError):
        conf.set_override("workers", protocol.MAX_CAPACITY + 1, group="agent")
        conf.agent.workers  # noqa: B018  (the value is checked when read)
    hello = {**VALID["hello"], "capacity": protocol.MAX_CAPACITY, "agent_id": "a" * protocol.MAX_NAME}
    protocol.encode("hello", hello)


def test_task_members_are_optional_and_pass_when_well_formed() -> None:
    members = [{"member_id": "0123abcd", "status": "accepted"}]
    older = {k: v for k, v in VALID["task"].items() if k != "members"}
    assert protocol.decode(envelope(type="task", body=older)).body["members"] is None
    assert protocol.decode(envelope(type="task", body={**VALID["task"], "members": members})).body["members"] == members


@pytest.mark.parametrize("sources", [
    [],
    [{"type": "http", "url": "http://x"}],
    [{"type": "peer"}],
    [{"type": "peer", "region": "bad\nname"}],
    [{"type": "sftp", "path": "relative/path"}],
    [{"type": "peer", "region": "R"}] * (protocol.MAX_SOURCES + 1),
    [{"type": "peer", "region": "R", "growing": "yes"}],
    ["RegionTwo"],
])
def test_task_sources_refused(sources: list[Any]) -> None:
    body = {**VALID["task"], "sources": sources}
    frame = msgpack.packb({"v": protocol.VERSION, "type": "task", "id": "m-1", "ts": 1.0, "body": body})
    assert code_of(frame) == "bad_field"


def test_old_peers_get_the_new_fields_defaults() -> None:
    """An old agent's hello and done, an old coordinator's task and heartbeat: no sources, no features."""
    hello = protocol.decode(protocol.encode("hello", {k: v for k, v in VALID["hello"].items() if k != "features"}))
    assert hello.body["features"] == []
    done = protocol.decode(protocol.encode("done", dict(TASK_REF)))
    assert done.body["cached"] is False and done.body["fetched_from"] is None
    task = protocol.decode(protocol.encode("task", {k: v for k, v in VALID["task"].items() if k != "sources"}))
    assert task.body["sources"] is None
    growing = [{"type": "peer", "region": "R", "growing": True}]
    assert protocol.decode(protocol.encode("task", {**VALID["task"], "sources": growing})).body["sources"] == growing
    assert protocol.decode(protocol.encode("heartbeat")).body["serving"] == []


def test_heartbeat_serving_holds_image_ids_only() -> None:
    frame = msgpack.packb({"v": protocol.VERSION, "type": "heartbeat", "id": "m-1", "ts": 1.0,
                           "body": {"serving": ["../../etc/passwd"]}})
    assert code_of(frame) == "bad_field"


def test_protocol_is_the_one_contract_and_passes_on_the_schemas_of_glancesync_messages() -> None:
    from glancesync import messages

    public = [name for name in vars(messages) if name.isupper() and not name.startswith("_")]
    assert public and all(getattr(protocol, name) is getattr(messages, name) for name in public)
    assert set(public) <= set(protocol.__all__)
    assert all(hasattr(protocol, name) for name in protocol.__all__)
