"""The message schemas: each message type's body fields, their bounds and the vocabulary.

``glancesync.protocol`` is the contract (the envelope, the dialogs, the session rules; it
re-exports every name here): this module says what each body may hold, and ``check_body``
checks a body against it (wirefields.py: the checks of single values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glancesync import untrusted, wirefields
from glancesync.exceptions import ProtocolError
from glancesync.wirefields import Field

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
        return all(isinstance(item, dict) and check_body("ack", item) is not None for item in value)
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



def refuse(code: str, detail: str) -> ProtocolError:
    return ProtocolError(code=code, detail=detail)


def _check_value(where: str, field: Field, value: Any) -> None:
    # bool is an int in Python: never let True pass as a count.
    if isinstance(value, bool) and bool not in field.types:
        raise refuse("bad_field", f"{where} must not be a boolean")
    if not isinstance(value, field.types):
        wanted = "/".join(t.__name__ for t in field.types)
        raise refuse("bad_field", f"{where} must be {wanted}, not {type(value).__name__}")
    if isinstance(value, (str, list)):
        limit = MAX_TEXT if isinstance(value, str) else MAX_ITEMS
        if len(value) > limit:
            raise refuse("bad_field", f"{where} is {len(value)} long, more than {limit}")
    if field.check is not None and not field.check(value):
        why = field.check.__doc__ or field.check.__name__.strip("_").replace("_", " ")
        raise refuse("bad_field", f"{where}={untrusted.quote(value)} is not {why}")


def check_body(msg_type: str, body: Mapping[str, Any]) -> dict[str, Any]:
    schema = SCHEMAS[msg_type]
    checked: dict[str, Any] = {}
    for name, field in schema.items():
        value = body.get(name)
        if value is None and not (field.nullable and name in body):
            # Absent, or null where null means absent.
            if field.required:
                raise refuse("missing_field", f"{msg_type}.{name} is {'null' if name in body else 'missing'}")
            default = field.default
            checked[name] = list(default) if isinstance(default, tuple) else default
            continue
        if value is not None:
            _check_value(f"{msg_type}.{name}", field, value)
        checked[name] = value
    return checked
