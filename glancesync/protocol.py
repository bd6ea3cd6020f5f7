"""The whole wire contract between glance_proxy, the coordinator, agents and the status tool.

Every frame is one msgpack map, the *envelope*::

    {"v": 1, "type": <str>, "id": <str>, "ts": <float seconds>, "body": <map>}

``id`` is unique per message (a uuid4 hex); replies quote the id they answer in
``body.ref`` where that matters.  ``decode`` checks the envelope and every field of
the body against ``SCHEMAS`` below and raises ``ProtocolError`` for anything else,
so a service never acts on a half-understood message.  Fields a newer sender adds
are ignored; optional fields an older sender leaves out get their defaults.

The dialogs, as grammars (C = coordinator, A = agent, P = glance_proxy sender,
S = status client, O = operator tool)::

    agent session   A: hello  C: welcome  C: cancel*
                    ( A: ready | C: task  A: ack  A: progress*  report
                      | C: cancel | A: heartbeat | C: heartbeat )*
                    ( A: bye | C: disconnect  -> A says hello again on a fresh socket )
    report          ( A: done | A: failed )+  C: result_ack
    event           P: event  C: event_ack | C: error
    status          S: status_query  C: status_reply | C: error
    operator        O: operator  C: operator_reply | C: error   (doc/operator-commands.md)

``ready.credits`` adds that many free slots to the agent's credit; each ``task``
consumes one.  Any message from a peer counts as a heartbeat.
``failed.retryable`` false means: do not try again without a change.

The session rules (doc/sessions.md):

- one worker per task: an agent runs at most one attempt of a task.  A ``task``
  for a task it already runs (or holds an unacked ``done`` of) is acked and not
  started again: that worker, or that result, now answers for the new attempt.
- a ``done`` or ``progress`` for an *older* attempt of a task whose current
  attempt is held (assigned or transferring) by the same agent is taken as the
  current attempt's: by the rule above it comes from the same worker, and the
  registration verifies the copy against glance whatever the attempt.  Any other
  report (and every ``ack`` and ``failed``) of an attempt that is not current is
  stale and changes nothing.
- ``hello.running`` lists ``{task_id, attempt}`` of every attempt the agent still
  runs or holds an unacknowledged result of (``hello.in_flight``: the same ids, for
  coordinators that predate ``running``; from an agent without ``running`` the ids
  are taken as the current attempts).  The coordinator keeps the lease of each
  listed attempt that is (by the rule above) still the agent's, answers ``cancel``
  for each other one (the agent terminates that worker and forgets its result),
  and requeues, as a retry, its tasks the agent did not list.
- every ``done`` and ``failed`` is answered with ``result_ack`` once the journal
  has it (or it was stale); the agent keeps the result and sends it again after
  every ``welcome`` and every few seconds (``agent.service.RESEND_SECONDS``) until
  acked.  A resent report of an attempt already finished is acked again and
  changes nothing.  A stopping agent takes no new work (a ``task`` it gets then is
  not started, and not acked).
- ``bye.handed_back`` lists the attempts a stopping agent gives back unfinished:
  they return to their queue at once without counting a retry.

What a field may hold, whoever sent it:

- image ids (``event``, ``task``, ``status_query``) are glance ids, UUIDs
  (``glancesync.untrusted.is_image_id``): an id reaches glance URLs and file names;
- counts and sizes are bounded: ``capacity`` and ``credits`` 1..MAX_CAPACITY,
  ``attempt`` 1..MAX_ATTEMPT, byte counts 0..MAX_SIZE (the journal's 64-bit columns),
  seconds are finite and at most MAX_SECONDS;
- ids (task, event: at most MAX_ID) and names (region, agent, version: MAX_NAME) hold
  no control characters; other strings are at most MAX_TEXT long, lists MAX_ITEMS;
- maps nest at most MAX_DEPTH deep, have string keys and plain values (no msgpack
  bin or ext types), and a whole frame is at most MAX_MESSAGE_BYTES, which bounds
  an image record too.

``null`` means "absent": an optional field sent as null gets its default, a
required one sent as null is refused.  Only fields *nullable by design* keep a
null, where it means "not applicable": ``done``'s size and hashes (update and
delete tasks verify no bytes), ``task.source`` and ``task.sources`` (nothing
to fetch), ``done.fetched_from`` (no bytes fetched), ``event.image``
and ``event.context`` (no record to pass on), ``status_query.image_id`` (the
summary view) and ``error.ref`` (nothing to refer to).

Error replies and log lines quote at most a short, escaped prefix of a refused
value (``glancesync.untrusted.quote``), never the frame.

No sockets here: this module turns dicts into bytes and back, nothing more.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from glancesync import untrusted, wirefields
from glancesync.exceptions import ProtocolError
from glancesync.wirefields import Field

VERSION = 1

# 1 MiB is far above any control message (the largest is a task carrying an image
# record with its properties) and keeps a hostile peer from making us buffer much.
MAX_MESSAGE_BYTES = 1024 * 1024
# Worker slots of one agent: far above what one host runs, small enough that credits
# and task lists stay cheap.
MAX_CAPACITY = 256
# Attempts of one task: the journal column is a 32-bit integer on every database.
MAX_ATTEMPT = 2**31 - 1
# Byte counts: the journal's BigInteger columns are signed 64-bit.
MAX_SIZE = 2**63 - 1
# Task and event ids fit the journal's String(64) keys; region and agent names its
# String(255) columns.
MAX_ID = 64
MAX_NAME = 255
MAX_SECONDS = wirefields.MAX_SECONDS
# Any other string (failure reasons quote glance's answers) and any list.
MAX_TEXT = 4096
MAX_ITEMS = 1024
# Maps and lists in a body nest at most this deep (an image record needs 3 or 4);
# deeper ones only make every later walk over the record risk the recursion limit.
MAX_DEPTH = 32

TASK_KINDS = ("copy", "update", "delete")
EVENT_KINDS = ("created", "uploaded", "imported", "updated", "deactivated", "reactivated", "deleted",
               "locations_changed", "tags_changed", "members_changed")
STATUS_VIEWS = ("summary", "image")
OPERATOR_ACTIONS = ("cancel", "resync_failed", "sync")
PROGRESS_PHASES = ("fetching", "uploading", "registering")  # what a copy's progress bytes count
# hello.features: "sources" = the agent reads task.sources (peers, fallback, doc/peers.md); "follow" =
# it reads a peer's growing copy ("growing" sources); "chain" = its cache relays its own running copies.
FEATURE_SOURCES, FEATURE_FOLLOW, FEATURE_CHAIN = "sources", "follow", "chain"
AGENT_FEATURES = (FEATURE_SOURCES, FEATURE_FOLLOW)
# done.fetched_from when the bytes came from the cascading store.
SOURCE_STORE = "cascading"
# Sources in one task: a first choice, a few fallbacks, the cascading store.
MAX_SOURCES = 16

# The coordinator's own calls to the cascading glance carry this header, so the
# glance_proxy filter makes no event of them (the loop guard of the original).
INTERNAL_REQUEST_HEADER = "X-Glance-Sync-Internal"

# The scheme of regional locations registered on the cascading image.
CASCADED_SCHEME = "cascaded"


def cascaded_url(region: str, image_id: str) -> str:
    return f"{CASCADED_SCHEME}://{region}/{image_id}"


_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)
_MAP = (dict,)
_LIST = (list,)

_ID = wirefields.label(MAX_ID)
_NAME = wirefields.label(MAX_NAME)
_SIZE = wirefields.count(0, MAX_SIZE)

_TASK_REF = {
    "task_id": Field(_STR, check=_ID),
    "attempt": Field(_INT, check=wirefields.count(1, MAX_ATTEMPT)),
}


def _task_refs(value: Any) -> bool:
    """a list of {task_id, attempt} maps"""
    try:
        return all(isinstance(item, dict) and _check_body("ack", item) is not None for item in value)
    except ProtocolError:
        return False


_REFS = Field(_LIST, required=False, default=(), check=_task_refs)

SCHEMAS: dict[str, dict[str, Field]] = {
    # agent -> coordinator
    "hello": {
        "region": Field(_STR, check=_NAME),
        "agent_id": Field(_STR, check=_NAME),
        "capacity": Field(_INT, check=wirefields.count(1, MAX_CAPACITY)),
        "version": Field(_STR, check=_NAME),
        "in_flight": Field(_LIST, required=False, default=(), check=wirefields.labels(MAX_ID)),
        # The attempts behind in_flight; older agents leave it out.
        "running": _REFS,
        # What this agent understands beyond version 1 (AGENT_FEATURES); older agents: none.
        "features": Field(_LIST, required=False, default=(), check=wirefields.labels(MAX_NAME)),
    },
    "ready": {"credits": Field(_INT, check=wirefields.count(1, MAX_CAPACITY))},
    "ack": dict(_TASK_REF),
    "progress": {
        **_TASK_REF,
        "bytes_done": Field(_INT, check=_SIZE),
        "bytes_total": Field(_INT, check=_SIZE),
        "phase": Field(_STR, required=False, check=wirefields.one_of(PROGRESS_PHASES)),  # older agents: absent
    },
    "done": {
        **_TASK_REF,
        # copy tasks report what they verified; update and delete tasks send None.
        "size": Field(_INT, required=False, nullable=True, check=_SIZE),
        "checksum": Field(_STR, required=False, nullable=True),
        "os_hash_algo": Field(_STR, required=False, nullable=True),
        "os_hash_value": Field(_STR, required=False, nullable=True),
        # Only when the region's glance hashes with another algorithm than the
        # cascading image: the uploaded bytes hashed in the region's algorithm, so the
        # coordinator can link the regional os_hash_value to the cascading one
        # (glancesync/verify.py).  Older agents leave them out.
        "region_hash_algo": Field(_STR, required=False, nullable=True),
        "region_hash_value": Field(_STR, required=False, nullable=True),
        "elapsed": Field(_NUM, required=False, default=0.0, check=wirefields.seconds(0.0)),
        # A copy: which source served the bytes (SOURCE_STORE or a peer region), and whether
        # the verified file is now in the agent's cache, served to peers (doc/peers.md).
        "fetched_from": Field(_STR, required=False, nullable=True, check=_NAME),
        "cached": Field(_BOOL, required=False, default=False),
    },
    "failed": {
        **_TASK_REF,
        "reason": Field(_STR, check=wirefields.not_empty),
        "retryable": Field(_BOOL),
    },
    # From the coordinator: the images other regions now fetch from this agent's cache
    # (never evicted meanwhile); absent from agents and older coordinators.
    "heartbeat": {"serving": Field(_LIST, required=False, default=(), check=wirefields.image_ids)},
    "bye": {"reason": Field(_STR, required=False, default=""), "handed_back": _REFS},
    # coordinator -> agent
    "welcome": {
        "heartbeat_interval": Field(_NUM, check=wirefields.seconds(0.0, inclusive=False)),
        "lease_timeout": Field(_NUM, check=wirefields.seconds(0.0, inclusive=False)),
    },
    "task": {
        **_TASK_REF,
        "kind": Field(_STR, check=wirefields.one_of(TASK_KINDS)),
        "image_id": Field(_STR, check=wirefields.image_id),
        "region": Field(_STR, check=_NAME),
        # The cascading image record as glance returned it (id, size, checksum,
        # os_hash_algo, os_hash_value, disk_format, container_format, properties...).
        "image": Field(_MAP),
        # Where the bytes come from; None for update and delete tasks.  For an SFTP
        # source: {"type": "sftp", "path": <absolute path in the cascading store>}.
        "source": Field(_MAP, required=False, nullable=True),
        # The sources to try in order, for agents with the "sources" feature: the first is
        # the coordinator's choice, the next ones are fallbacks, the last is the cascading
        # store (``source``).  A peer: {"type": "peer", "region": <region holding a copy>}, with
        # "growing": true when that region's copy still runs (agents with "follow").
        "sources": Field(_LIST, required=False, nullable=True, check=wirefields.sources(MAX_SOURCES)),
        # The members of a shared cascading image, [{"member_id", "status"}], for copy and
        # update tasks; absent when the image is not shared or the coordinator is older.
        "members": Field(_LIST, required=False, nullable=True, check=wirefields.members),
    },
    "disconnect": {"reason": Field(_STR, required=False, default="")},
    # The coordinator has the report of this attempt (or it was stale): stop resending it.
    "result_ack": dict(_TASK_REF),
    # This attempt is no longer the agent's: terminate its worker, drop its result;
    # ``discard``: the copy is cancelled for good, remove its partial file too.
    "cancel": {**_TASK_REF, "reason": Field(_STR, required=False, default=""),
               "discard": Field(_BOOL, required=False, default=False)},
    # glance_proxy -> coordinator
    "event": {
        "event_id": Field(_STR, check=_ID),
        "kind": Field(_STR, check=wirefields.one_of(EVENT_KINDS)),
        "image_id": Field(_STR, check=wirefields.image_id),
        # The image record from glance's response when it had one (POST, PATCH).
        "image": Field(_MAP, required=False, nullable=True),
        # Names of the properties a PATCH changed: a hint, as the user wrote them (glance
        # takes any property name of up to 255 characters), so control characters pass.
        "changes": Field(_LIST, required=False, default=(), check=wirefields.labels(MAX_NAME, controls=True)),
        # user_id, project_id, roles as glance saw them; image owner and visibility.
        "context": Field(_MAP, required=False, default=None, nullable=True),
        "occurred_at": Field(_NUM, required=False, default=0.0, check=wirefields.finite),
    },
    "event_ack": {"event_id": Field(_STR, check=_ID)},
    # status tool <-> coordinator
    "status_query": {
        "view": Field(_STR, check=wirefields.one_of(STATUS_VIEWS)),
        "image_id": Field(_STR, required=False, nullable=True, check=wirefields.image_id),
    },
    "status_reply": {"view": Field(_STR, check=wirefields.one_of(STATUS_VIEWS)), "data": Field(_MAP)},
    # operator tool <-> coordinator (glance-sync-manage cancel, resync --failed, sync)
    "operator": {
        "action": Field(_STR, check=wirefields.one_of(OPERATOR_ACTIONS)),
        "image_id": Field(_STR, required=False, nullable=True, check=wirefields.image_id),
        "regions": Field(_LIST, required=False, default=(), check=wirefields.labels(MAX_NAME)),
    },
    "operator_reply": {"action": Field(_STR, check=wirefields.one_of(OPERATOR_ACTIONS)), "data": Field(_MAP)},
    # any reply to a message that could not be served
    "error": {
        "code": Field(_STR, check=_NAME),
        "reason": Field(_STR),
        "ref": Field(_STR, required=False, nullable=True, check=_NAME),
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


def _refuse(code: str, detail: str) -> ProtocolError:
    return ProtocolError(code=code, detail=detail)


def _check_value(where: str, field: Field, value: Any) -> None:
    # bool is an int in Python: never let True pass as a count.
    if isinstance(value, bool) and bool not in field.types:
        raise _refuse("bad_field", f"{where} must not be a boolean")
    if not isinstance(value, field.types):
        wanted = "/".join(t.__name__ for t in field.types)
        raise _refuse("bad_field", f"{where} must be {wanted}, not {type(value).__name__}")
    if isinstance(value, (str, list)):
        limit = MAX_TEXT if isinstance(value, str) else MAX_ITEMS
        if len(value) > limit:
            raise _refuse("bad_field", f"{where} is {len(value)} long, more than {limit}")
    if field.check is not None and not field.check(value):
        why = field.check.__doc__ or field.check.__name__.strip("_").replace("_", " ")
        raise _refuse("bad_field", f"{where}={untrusted.quote(value)} is not {why}")


def _check_body(msg_type: str, body: Mapping[str, Any]) -> dict[str, Any]:
    schema = SCHEMAS[msg_type]
    checked: dict[str, Any] = {}
    for name, field in schema.items():
        value = body.get(name)
        if value is None and not (field.nullable and name in body):
            # Absent, or null where null means absent.
            if field.required:
                raise _refuse("missing_field", f"{msg_type}.{name} is {'null' if name in body else 'missing'}")
            default = field.default
            checked[name] = list(default) if isinstance(default, tuple) else default
            continue
        if value is not None:
            _check_value(f"{msg_type}.{name}", field, value)
        checked[name] = value
    return checked


def encode(msg_type: str, body: Mapping[str, Any] | None = None, msg_id: str | None = None) -> bytes:
    """Validate and pack one message; raises ProtocolError for a body we would refuse."""
    if msg_type not in SCHEMAS:
        raise _refuse("unknown_type", f"unknown message type {untrusted.quote(msg_type)}")
    checked = _check_body(msg_type, body or {})
    envelope = {"v": VERSION, "type": msg_type, "id": msg_id or new_id(), "ts": time.time(), "body": checked}
    try:
        packed = msgpack.packb(envelope, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _refuse("unpackable", f"{msg_type} cannot be packed: {type(exc).__name__}") from None
    if len(packed) > MAX_MESSAGE_BYTES:
        raise _refuse("oversized", f"{msg_type} is {len(packed)} bytes")
    return packed


def decode(frame: bytes) -> Message:
    """Unpack and validate one frame; raises ProtocolError naming what is wrong."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise _refuse("oversized", f"frame of {len(frame)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        envelope = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # The library's message may quote the data; its type names the problem.
        raise _refuse("undecodable", f"not a msgpack frame ({type(exc).__name__})") from None
    if not isinstance(envelope, dict):
        raise _refuse("bad_envelope", f"envelope is {type(envelope).__name__}, not a map")
    version = envelope.get("v")
    if version != VERSION or isinstance(version, bool):
        raise _refuse("version", f"unsupported protocol version {untrusted.quote(version)}")
    msg_type, msg_id, ts, body = (envelope.get(k) for k in ("type", "id", "ts", "body"))
    if not isinstance(msg_type, str):
        raise _refuse("bad_envelope", "envelope.type must be a string")
    if msg_type not in SCHEMAS:
        raise _refuse("unknown_type", f"unknown message type {untrusted.quote(msg_type)}")
    if not isinstance(msg_id, str) or not _ID(msg_id):
        raise _refuse("bad_envelope", f"envelope.id must be {_ID.__doc__}")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not wirefields.finite(ts):
        raise _refuse("bad_envelope", f"envelope.ts must be {wirefields.finite.__doc__}")
    if not isinstance(body, dict):
        raise _refuse("bad_envelope", "envelope.body must be a map")
    wirefields.check_plain(body, MAX_DEPTH)
    return Message(type=msg_type, body=_check_body(msg_type, body), id=msg_id, ts=float(ts))


def refused_report(frame: bytes) -> dict[str, Any] | None:
    """``{"task_id", "attempt"}`` of a ``done`` or ``failed`` frame that ``decode`` refused.

    A final report that cannot be accepted must still end its attempt: the agent has
    finished with the task, and without this the coordinator would wait on it (and
    renew its lease) for as long as the agent stays connected.  None when the frame
    names no task in a well-formed reference.
    """
    try:
        envelope = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        if not isinstance(envelope, dict) or envelope.get("type") not in ("done", "failed"):
            return None
        body = envelope.get("body")
        return _check_body("ack", body) if isinstance(body, dict) else None
    except (ValueError, TypeError, msgpack.UnpackException, ProtocolError):
        return None


def error_reply(exc: ProtocolError, ref: str | None = None) -> bytes:
    """The frame that answers a message we refused; never raises for the reason's content."""
    reason = untrusted.printable(exc.detail)[:MAX_TEXT]
    code = exc.code if isinstance(exc.code, str) and _NAME(exc.code) else "refused"
    return encode("error", {"code": code, "reason": reason, "ref": ref if ref and _ID(ref) else None})
