"""The whole wire contract between glance_proxy, the coordinator, agents and the status tool.

Every frame is one msgpack map, the *envelope*::

    {"v": 1, "type": <str>, "id": <str>, "ts": <float seconds>, "body": <map>}

``id`` is unique per message (a uuid4 hex); replies quote the id they answer in
``body.ref`` where that matters.  ``decode`` checks the envelope and every field of
the body against ``SCHEMAS`` below and raises ``ProtocolError`` for anything else,
so a service never acts on a half-understood message.  Fields a newer sender adds
are ignored; optional fields an older sender leaves out get their defaults.

The dialogs, as grammars (C = coordinator, A = agent, P = glance_proxy sender,
S = status client)::

    agent session   A: hello  C: welcome
                    ( A: ready | C: task  A: ack  A: progress*  A: done | A: failed
                      | A: heartbeat | C: heartbeat )*
                    C: disconnect  -> A says hello again on a fresh socket
    event           P: event  C: event_ack | C: error
    status          S: status_query  C: status_reply | C: error

``ready.credits`` adds that many free slots to the agent's credit; each ``task``
consumes one.  ``hello.in_flight`` lists the task ids the agent is still running
so a reconnecting agent keeps its leases.  Any message from a peer counts as a
heartbeat.  ``failed.retryable`` false means: do not try again without a change.

No sockets here: this module turns dicts into bytes and back, nothing more.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from glancesync.exceptions import ProtocolError

VERSION = 1

# 1 MiB is far above any control message (the largest is a task carrying an image
# record with its properties) and keeps a hostile peer from making us buffer much.
MAX_MESSAGE_BYTES = 1024 * 1024

TASK_KINDS = ("copy", "update", "delete")
EVENT_KINDS = (
    "created",
    "uploaded",
    "imported",
    "updated",
    "deactivated",
    "reactivated",
    "deleted",
    "locations_changed",
    "tags_changed",
)
STATUS_VIEWS = ("summary", "image")

# The coordinator's own calls to the cascading glance carry this header, so the
# glance_proxy filter makes no event of them (the loop guard of the original).
INTERNAL_REQUEST_HEADER = "X-Glance-Sync-Internal"

# The scheme of regional locations registered on the cascading image.
CASCADED_SCHEME = "cascaded"


def cascaded_url(region: str, image_id: str) -> str:
    return f"{CASCADED_SCHEME}://{region}/{image_id}"


def _non_negative(value: Any) -> bool:
    return value >= 0


def _positive(value: Any) -> bool:
    # "> 0", not ">= 1": for counts it is the same, and intervals such as
    # welcome.heartbeat_interval may be fractions of a second ([coordinator] min 0.1).
    return value > 0


def _not_empty(value: Any) -> bool:
    return len(value) > 0


def _in(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return value in choices

    check.__doc__ = "one of " + ", ".join(choices)
    return check


def _strings(value: Any) -> bool:
    return all(isinstance(item, str) for item in value)


@dataclass(frozen=True)
class Field:
    """One body field: its accepted types, whether it must be there, a value check."""

    types: tuple[type, ...]
    required: bool = True
    default: Any = None
    check: Callable[[Any], bool] | None = None
    nullable: bool = False


_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)
_MAP = (dict,)
_LIST = (list,)

_TASK_REF = {
    "task_id": Field(_STR, check=_not_empty),
    "attempt": Field(_INT, check=_positive),
}

SCHEMAS: dict[str, dict[str, Field]] = {
    # agent -> coordinator
    "hello": {
        "region": Field(_STR, check=_not_empty),
        "agent_id": Field(_STR, check=_not_empty),
        "capacity": Field(_INT, check=_positive),
        "version": Field(_STR),
        "in_flight": Field(_LIST, required=False, default=(), check=_strings),
    },
    "ready": {"credits": Field(_INT, check=_positive)},
    "ack": dict(_TASK_REF),
    "progress": {
        **_TASK_REF,
        "bytes_done": Field(_INT, check=_non_negative),
        "bytes_total": Field(_INT, check=_non_negative),
    },
    "done": {
        **_TASK_REF,
        # copy tasks report what they verified; update and delete tasks send None.
        "size": Field(_INT, required=False, nullable=True, check=_non_negative),
        "checksum": Field(_STR, required=False, nullable=True),
        "os_hash_algo": Field(_STR, required=False, nullable=True),
        "os_hash_value": Field(_STR, required=False, nullable=True),
        # Only when the region's glance hashes with another algorithm than the
        # cascading image: the uploaded bytes hashed in the region's algorithm, so the
        # coordinator can link the regional os_hash_value to the cascading one
        # (glancesync/verify.py).  Older agents leave them out.
        "region_hash_algo": Field(_STR, required=False, nullable=True),
        "region_hash_value": Field(_STR, required=False, nullable=True),
        "elapsed": Field(_NUM, required=False, default=0.0, check=_non_negative),
    },
    "failed": {
        **_TASK_REF,
        "reason": Field(_STR, check=_not_empty),
        "retryable": Field(_BOOL),
    },
    "heartbeat": {},
    "bye": {"reason": Field(_STR, required=False, default="")},
    # coordinator -> agent
    "welcome": {
        "heartbeat_interval": Field(_NUM, check=_positive),
        "lease_timeout": Field(_NUM, check=_positive),
    },
    "task": {
        **_TASK_REF,
        "kind": Field(_STR, check=_in(TASK_KINDS)),
        "image_id": Field(_STR, check=_not_empty),
        "region": Field(_STR, check=_not_empty),
        # The cascading image record as glance returned it (id, size, checksum,
        # os_hash_algo, os_hash_value, disk_format, container_format, properties...).
        "image": Field(_MAP),
        # Where the bytes come from; None for update and delete tasks.  For an SFTP
        # source: {"type": "sftp", "path": <absolute path in the cascading store>}.
        "source": Field(_MAP, required=False, nullable=True),
    },
    "disconnect": {"reason": Field(_STR, required=False, default="")},
    # glance_proxy -> coordinator
    "event": {
        "event_id": Field(_STR, check=_not_empty),
        "kind": Field(_STR, check=_in(EVENT_KINDS)),
        "image_id": Field(_STR, check=_not_empty),
        # The image record from glance's response when it had one (POST, PATCH).
        "image": Field(_MAP, required=False, nullable=True),
        # Names of the properties a PATCH changed.
        "changes": Field(_LIST, required=False, default=(), check=_strings),
        # user_id, project_id, roles as glance saw them; image owner and visibility.
        "context": Field(_MAP, required=False, default=None, nullable=True),
        "occurred_at": Field(_NUM, required=False, default=0.0),
    },
    "event_ack": {"event_id": Field(_STR, check=_not_empty)},
    # status tool <-> coordinator
    "status_query": {
        "view": Field(_STR, check=_in(STATUS_VIEWS)),
        "image_id": Field(_STR, required=False, nullable=True),
    },
    "status_reply": {"view": Field(_STR), "data": Field(_MAP)},
    # any reply to a message that could not be served
    "error": {
        "code": Field(_STR),
        "reason": Field(_STR),
        "ref": Field(_STR, required=False, nullable=True),
    },
}


@dataclass(frozen=True)
class Message:
    """A decoded, validated message."""

    type: str
    body: dict[str, Any]
    id: str
    ts: float
    version: int = VERSION


def new_id() -> str:
    return uuid.uuid4().hex


def _check_body(msg_type: str, body: Mapping[str, Any]) -> dict[str, Any]:
    schema = SCHEMAS[msg_type]
    checked: dict[str, Any] = {}
    for name, field in schema.items():
        if name not in body:
            if field.required:
                raise ProtocolError(code="missing_field", detail=f"{msg_type}.{name} is missing")
            default = field.default
            checked[name] = list(default) if isinstance(default, tuple) else default
            continue
        value = body[name]
        if value is None and (field.nullable or not field.required):
            checked[name] = None
            continue
        # bool is an int in Python: never let True pass as a count.
        if isinstance(value, bool) and bool not in field.types:
            raise ProtocolError(code="bad_field", detail=f"{msg_type}.{name} must not be a boolean")
        if not isinstance(value, field.types):
            wanted = "/".join(t.__name__ for t in field.types)
            raise ProtocolError(
                code="bad_field",
                detail=f"{msg_type}.{name} must be {wanted}, not {type(value).__name__}",
            )
        if field.check is not None and not field.check(value):
            why = field.check.__doc__ or field.check.__name__.strip("_").replace("_", " ")
            raise ProtocolError(code="bad_field", detail=f"{msg_type}.{name}={value!r} is not {why}")
        checked[name] = value
    return checked


def encode(msg_type: str, body: Mapping[str, Any] | None = None, msg_id: str | None = None) -> bytes:
    """Validate and pack one message; raises ProtocolError for a body we would refuse."""
    if msg_type not in SCHEMAS:
        raise ProtocolError(code="unknown_type", detail=f"unknown message type {msg_type!r}")
    checked = _check_body(msg_type, body or {})
    envelope = {"v": VERSION, "type": msg_type, "id": msg_id or new_id(), "ts": time.time(), "body": checked}
    packed = msgpack.packb(envelope, use_bin_type=True)
    if len(packed) > MAX_MESSAGE_BYTES:
        raise ProtocolError(code="oversized", detail=f"{msg_type} is {len(packed)} bytes")
    return packed


def decode(frame: bytes) -> Message:
    """Unpack and validate one frame; raises ProtocolError naming what is wrong."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(code="oversized", detail=f"frame of {len(frame)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        envelope = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(code="undecodable", detail=f"not a msgpack frame: {exc}") from None
    if not isinstance(envelope, dict):
        raise ProtocolError(code="bad_envelope", detail=f"envelope is {type(envelope).__name__}, not a map")
    version = envelope.get("v")
    if version != VERSION or isinstance(version, bool):
        raise ProtocolError(code="version", detail=f"unsupported protocol version {version!r}")
    msg_type, msg_id, ts, body = (envelope.get(k) for k in ("type", "id", "ts", "body"))
    if not isinstance(msg_type, str):
        raise ProtocolError(code="bad_envelope", detail="envelope.type must be a string")
    if msg_type not in SCHEMAS:
        raise ProtocolError(code="unknown_type", detail=f"unknown message type {msg_type[:64]!r}")
    if not isinstance(msg_id, str) or not msg_id:
        raise ProtocolError(code="bad_envelope", detail="envelope.id must be a non-empty string")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise ProtocolError(code="bad_envelope", detail="envelope.ts must be a number")
    if not isinstance(body, dict):
        raise ProtocolError(code="bad_envelope", detail="envelope.body must be a map")
    return Message(type=msg_type, body=_check_body(msg_type, body), id=msg_id, ts=float(ts))


def error_reply(exc: ProtocolError, ref: str | None = None) -> bytes:
    """The frame that answers a message we refused."""
    return encode("error", {"code": exc.code, "reason": exc.detail, "ref": ref})
