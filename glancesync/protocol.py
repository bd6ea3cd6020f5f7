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
from glancesync.messages import (
    AGENT_FEATURES,
    EVENT_KINDS,
    FEATURE_CHAIN,
    FEATURE_FOLLOW,
    FEATURE_SOURCES,
    MAX_ATTEMPT,
    MAX_CAPACITY,
    MAX_ID,
    MAX_ITEMS,
    MAX_NAME,
    MAX_SECONDS,
    MAX_SIZE,
    MAX_SOURCES,
    MAX_TEXT,
    OPERATOR_ACTIONS,
    PROGRESS_PHASES,
    SCHEMAS,
    SOURCE_STORE,
    STATUS_VIEWS,
    TASK_KINDS,
    check_body,
    refuse,
)

# The bounds, the vocabulary and the schemas live in glancesync.messages; this module is the
# one contract every package imports, so it passes them on.
__all__ = ["AGENT_FEATURES", "CASCADED_SCHEME", "EVENT_KINDS", "FEATURE_CHAIN", "FEATURE_FOLLOW", "FEATURE_SOURCES",
           "INTERNAL_REQUEST_HEADER", "MAX_ATTEMPT", "MAX_CAPACITY", "MAX_DEPTH", "MAX_ID", "MAX_ITEMS",
           "MAX_MESSAGE_BYTES", "MAX_NAME", "MAX_SECONDS", "MAX_SIZE", "MAX_SOURCES", "MAX_TEXT", "Message",
           "OPERATOR_ACTIONS", "PROGRESS_PHASES", "SCHEMAS", "SOURCE_STORE", "STATUS_VIEWS", "TASK_KINDS", "VERSION",
           "cascaded_url", "decode", "encode", "encode_prepacked", "error_reply", "new_id", "refused_report"]

VERSION = 1

# 1 MiB is far above any control message (the largest is a task carrying an image
# record with its properties) and keeps a hostile peer from making us buffer much.
MAX_MESSAGE_BYTES = 1024 * 1024
# Maps and lists in a body nest at most this deep (an image record needs 3 or 4);
# deeper ones only make every later walk over the record risk the recursion limit.
MAX_DEPTH = 32

# The coordinator's own calls to the cascading glance carry this header, so the
# glance_proxy filter makes no event of them (the loop guard of the original).
INTERNAL_REQUEST_HEADER = "X-Glance-Sync-Internal"

# The scheme of regional locations registered on the cascading image.
CASCADED_SCHEME = "cascaded"


_ID = wirefields.label(MAX_ID)
_NAME = wirefields.label(MAX_NAME)


def cascaded_url(region: str, image_id: str) -> str:
    return f"{CASCADED_SCHEME}://{region}/{image_id}"


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


def encode(msg_type: str, body: Mapping[str, Any] | None = None, msg_id: str | None = None) -> bytes:
    """Validate and pack one message; raises ProtocolError for a body we would refuse."""
    if msg_type not in SCHEMAS:
        raise refuse("unknown_type", f"unknown message type {untrusted.quote(msg_type)}")
    checked = check_body(msg_type, body or {})
    envelope = {"v": VERSION, "type": msg_type, "id": msg_id or new_id(), "ts": time.time(), "body": checked}
    try:
        packed = msgpack.packb(envelope, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise refuse("unpackable", f"{msg_type} cannot be packed: {type(exc).__name__}") from None
    if len(packed) > MAX_MESSAGE_BYTES:
        raise refuse("oversized", f"{msg_type} is {len(packed)} bytes")
    return packed


def encode_prepacked(msg_type: str, body: Mapping[str, Any], prepacked: Mapping[str, bytes],
                     msg_id: str | None = None) -> bytes:
    """``encode``, with the body fields in ``prepacked`` given as their msgpack bytes already.

    The same frame as ``encode`` would make of the unpacked values (a map's key order aside),
    for a large reply assembled from pieces packed once and kept (coordinator/statuscache.py).
    Each piece must be one packed map, which a map field's schema asks for anyway.
    """
    if msg_type not in SCHEMAS:
        raise refuse("unknown_type", f"unknown message type {untrusted.quote(msg_type)}")
    checked = check_body(msg_type, {**body, **{name: {} for name in prepacked}})
    for name, piece in prepacked.items():
        if SCHEMAS[msg_type][name].types != (dict,) or not piece or not _is_packed_map(piece[0]):
            raise refuse("unpackable", f"{msg_type}.{name} is not a packed map")
        del checked[name]
    packer = msgpack.Packer(use_bin_type=True)
    try:
        head = packer.pack({"v": VERSION, "type": msg_type, "id": msg_id or new_id(), "ts": time.time()})
        parts = [packer.pack_map_header(len(checked) + len(prepacked))]
        for name, value in checked.items():
            parts += (packer.pack(name), packer.pack(value))
        for name, piece in prepacked.items():
            parts += (packer.pack(name), piece)
    except (TypeError, ValueError, OverflowError) as exc:
        raise refuse("unpackable", f"{msg_type} cannot be packed: {type(exc).__name__}") from None
    # The envelope's map of 4 becomes a map of 5 with "body" last.
    packed = b"".join((packer.pack_map_header(5), head[1:], packer.pack("body"), *parts))
    if len(packed) > MAX_MESSAGE_BYTES:
        raise refuse("oversized", f"{msg_type} is {len(packed)} bytes")
    return packed


def _is_packed_map(first: int) -> bool:
    """a msgpack map: fixmap (0x80-0x8f), map 16 (0xde) or map 32 (0xdf)"""
    return 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)


def decode(frame: bytes) -> Message:
    """Unpack and validate one frame; raises ProtocolError naming what is wrong."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise refuse("oversized", f"frame of {len(frame)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        envelope = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # The library's message may quote the data; its type names the problem.
        raise refuse("undecodable", f"not a msgpack frame ({type(exc).__name__})") from None
    if not isinstance(envelope, dict):
        raise refuse("bad_envelope", f"envelope is {type(envelope).__name__}, not a map")
    version = envelope.get("v")
    if version != VERSION or isinstance(version, bool):
        raise refuse("version", f"unsupported protocol version {untrusted.quote(version)}")
    msg_type, msg_id, ts, body = (envelope.get(k) for k in ("type", "id", "ts", "body"))
    if not isinstance(msg_type, str):
        raise refuse("bad_envelope", "envelope.type must be a string")
    if msg_type not in SCHEMAS:
        raise refuse("unknown_type", f"unknown message type {untrusted.quote(msg_type)}")
    if not isinstance(msg_id, str) or not _ID(msg_id):
        raise refuse("bad_envelope", f"envelope.id must be {_ID.__doc__}")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not wirefields.finite(ts):
        raise refuse("bad_envelope", f"envelope.ts must be {wirefields.finite.__doc__}")
    if not isinstance(body, dict):
        raise refuse("bad_envelope", "envelope.body must be a map")
    wirefields.check_plain(body, MAX_DEPTH)
    return Message(type=msg_type, body=check_body(msg_type, body), id=msg_id, ts=float(ts))


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
        return check_body("ack", body) if isinstance(body, dict) else None
    except (ValueError, TypeError, msgpack.UnpackException, ProtocolError):
        return None


def error_reply(exc: ProtocolError, ref: str | None = None) -> bytes:
    """The frame that answers a message we refused; never raises for the reason's content."""
    reason = untrusted.printable(exc.detail)[:MAX_TEXT]
    code = exc.code if isinstance(exc.code, str) and _NAME(exc.code) else "refused"
    return encode("error", {"code": code, "reason": reason, "ref": ref if ref and _ID(ref) else None})
