"""Checks for the values of wire fields: types, bounds and the shape of ids and names.

``glancesync.protocol`` builds its message schemas from these; each check carries a
docstring that says what it accepts, which is what a refusal quotes to the peer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from glancesync import untrusted
from glancesync.exceptions import ProtocolError

# Seconds, epoch times and intervals alike: finite and of at most this size (over
# 30,000 years), so that no later arithmetic on them overflows.
MAX_SECONDS = 1e12

# C0, DEL and C1: never part of an id or a name (they end up in logs and on terminals).
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def count(low: int, high: int) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return low <= value <= high

    check.__doc__ = f"between {low} and {high}"
    return check


def seconds(minimum: float, inclusive: bool = True) -> Callable[[Any], bool]:
    # "> 0", not ">= 1" for intervals: welcome.heartbeat_interval may be a fraction
    # of a second ([coordinator] min 0.1).
    def check(value: Any) -> bool:
        return finite(value) and (value >= minimum if inclusive else value > minimum)

    check.__doc__ = f"a number of seconds {'>=' if inclusive else '>'} {minimum:g} and <= {MAX_SECONDS:g}"
    return check


def finite(value: Any) -> bool:
    """a number of seconds between -1e12 and 1e12"""
    return math.isfinite(value) and -MAX_SECONDS <= value <= MAX_SECONDS


def fits(value: str, limit: int, controls: bool = False) -> bool:
    return 0 < len(value) <= limit and (controls or CONTROL.search(value) is None)


def label(limit: int) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return fits(value, limit)

    check.__doc__ = f"1 to {limit} characters without control characters"
    return check


def labels(limit: int, controls: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return all(isinstance(item, str) and fits(item, limit, controls) for item in value)

    check.__doc__ = f"a list of strings of 1 to {limit} characters" + ("" if controls else ", no control characters")
    return check


def one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return value in choices

    check.__doc__ = "one of " + ", ".join(choices)
    return check


def not_empty(value: Any) -> bool:
    """not empty"""
    return len(value) > 0


def image_id(value: Any) -> bool:
    return untrusted.is_image_id(value)


image_id.__doc__ = untrusted.IMAGE_ID_FORM


@dataclass(frozen=True)
class Field:
    """One body field: its accepted types, whether it must be there, a value check.

    ``nullable``: null is a value of its own here (see the module docstring); for any
    other field null means absent.  Strings are at most MAX_TEXT long, lists MAX_ITEMS.
    """

    types: tuple[type, ...]
    required: bool = True
    default: Any = None
    check: Callable[[Any], bool] | None = None
    nullable: bool = False


# What a msgpack frame decodes to besides maps and lists (exact types: msgpack makes no subclasses).
_SCALARS = frozenset((str, int, float, bool, type(None)))


def check_plain(value: Any, max_depth: int) -> None:
    """Refuse what no sender of ours makes: deep nesting, non-string keys, bin and ext types."""
    # Level by level, without a call per value: a 500-region status summary holds ~6,000 values.
    level, depth = [value], 0
    while level:
        if depth > max_depth:
            raise ProtocolError(code="bad_body", detail=f"maps and lists nest more than {max_depth} deep")
        nested: list[Any] = []
        for item in level:
            kind = type(item)
            if kind is dict:
                for key in item:
                    if type(key) is not str:
                        raise ProtocolError(code="bad_body", detail=f"map key {untrusted.quote(key)} is not a string")
                nested += item.values()
            elif kind is list:
                nested += item
            elif kind not in _SCALARS:
                raise ProtocolError(code="bad_body", detail=f"a {kind.__name__} value is not allowed")
        level, depth = nested, depth + 1


MEMBER_STATUSES = ("pending", "accepted", "rejected")
_MEMBER_ID = label(255)


def members(value: Any) -> bool:
    """a list of {member_id, status} maps, status one of pending, accepted, rejected"""
    return all(
        isinstance(item, dict)
        and isinstance(item.get("member_id"), str) and _MEMBER_ID(item["member_id"])
        and item.get("status") in MEMBER_STATUSES
        for item in value
    )


def image_ids(value: Any) -> bool:
    """a list of glance image ids"""
    return all(untrusted.is_image_id(item) for item in value)


def sources(limit: int) -> Callable[[Any], bool]:
    """Where a copy may fetch from: sftp paths in the cascading store, or peer regions by name."""
    name = label(255)

    def check(value: Any) -> bool:
        if not 0 < len(value) <= limit:
            return False
        for item in value:
            if not isinstance(item, dict) or item.get("type") not in ("sftp", "peer"):
                return False
            if item["type"] == "sftp":
                path = item.get("path")
                if not isinstance(path, str) or not path.startswith("/") or not fits(path, 4096):
                    return False
            elif not (isinstance(item.get("region"), str) and name(item["region"])):
                return False
            elif not isinstance(item.get("growing", False), bool):
                return False
        return True

    check.__doc__ = (f"a list of 1 to {limit} sources, each {{type: sftp, path: /absolute}} "
                     "or {type: peer, region: name, growing: optional bool}")
    return check
