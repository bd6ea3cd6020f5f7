"""What the agent tells the coordinator when a task ends: a ``done`` or ``failed`` body, kept until acked.

A worker's result dict (agent/task.py) becomes one report of the ``agent session``
grammar (glancesync.protocol); agent/service.py holds it as a :class:`Result`
until the coordinator's ``result_ack``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger(__name__)

# What a copy's ``done`` reports besides the task reference (None values are left out).
DONE_FIELDS = ("size", "checksum", "os_hash_algo", "os_hash_value", "region_hash_algo", "region_hash_value",
               "elapsed", "fetched_from", "cached")
# Failure reasons travel at most this long.
MAX_REASON = 2000


@dataclass
class Result:
    """A ``done`` or ``failed`` not yet acknowledged by the coordinator."""

    msg_type: str
    body: dict[str, Any]
    resend_at: float = 0.0


def report_of(ref: dict[str, Any], result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(message type, body) reporting ``result`` for the attempt ``ref``, logged once."""
    if result.get("outcome") == "done":
        body = {**ref, **{k: result[k] for k in DONE_FIELDS if result.get(k) is not None}}
        LOG.info("task %s done%s", ref["task_id"],
                 f" (bytes from {body['fetched_from']})" if body.get("fetched_from") else "")
        return "done", body
    reason = str(result.get("reason") or "unknown failure")[:MAX_REASON]
    body = {**ref, "reason": reason, "retryable": bool(result.get("retryable"))}
    LOG.warning("task %s failed (retryable=%s): %s", ref["task_id"], body["retryable"], reason)
    return "failed", body
