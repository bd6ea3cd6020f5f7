"""The state of one image in one region, and the only transitions allowed between states.

::

    pending -> assigned -> transferring -> registering -> synced
        \\__________\\______________\\______________\\___> failed(reason)
    (any live state) -> deleting -> deleted (-> pending: a copy again, once the id was purged)
    pending | assigned | transferring -> cancelled (an operator's cancel, or a delete)

``assigned``: a task was handed to an agent that has not acknowledged it yet.
``transferring``: the agent acknowledged it and is moving bytes (or applying an update).
``registering``: the agent reported ``done``; the coordinator verifies the copy against
the cascading image and adds the regional location.
A lapsed lease or a retryable failure of the transfer returns to ``pending``; a
registration that fails for a reason that may pass stays ``registering`` (retried on its
own horizon).  ``synced`` also needs two facts kept beside the state in the journal: the
copy is verified and registered, and the newest metadata is applied (doc/states.md); an
update that finishes without a registered copy makes the region ``failed``.
``deleted`` is final while glance keeps the id: glance never lets a deleted image id be
created again in that region until an operator purges its row there.  Only a copy moves it
on (back to ``pending``): the reconciler's slow retry or an operator's resync, whose create
glance refuses (409) until that purge, so the region then shows ``failed`` with that reason.
``cancelled``: an operator (``glance-sync-manage cancel``) or a delete of the cascading
image stopped the copy before it was made; it is never retried on its own, only by an
operator's ``resync``/``sync`` (back to ``pending``) or ended by a delete.

No other module spells a state as a string: use ``SyncState``.
"""

from __future__ import annotations

import enum


class SyncState(enum.StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    TRANSFERRING = "transferring"
    REGISTERING = "registering"
    SYNCED = "synced"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"
    CANCELLED = "cancelled"


S = SyncState
TRANSITIONS: dict[SyncState, frozenset[SyncState]] = {
    S.PENDING: frozenset({S.ASSIGNED, S.FAILED, S.DELETING, S.CANCELLED}),
    S.ASSIGNED: frozenset({S.TRANSFERRING, S.REGISTERING, S.SYNCED, S.PENDING, S.FAILED, S.DELETING,
                           S.CANCELLED}),
    S.TRANSFERRING: frozenset({S.REGISTERING, S.SYNCED, S.PENDING, S.FAILED, S.DELETING, S.CANCELLED}),
    S.REGISTERING: frozenset({S.SYNCED, S.PENDING, S.FAILED, S.DELETING}),
    S.SYNCED: frozenset({S.PENDING, S.DELETING}),
    S.FAILED: frozenset({S.PENDING, S.DELETING}),
    S.DELETING: frozenset({S.DELETED, S.FAILED, S.DELETING}),
    S.DELETED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING, S.DELETING}),
}
del S

# States in which work for the (image, region) is still under way.
ACTIVE_STATES = frozenset(
    {SyncState.PENDING, SyncState.ASSIGNED, SyncState.TRANSFERRING, SyncState.REGISTERING, SyncState.DELETING}
)
FINAL_STATES = frozenset({SyncState.SYNCED, SyncState.FAILED, SyncState.DELETED, SyncState.CANCELLED})
# States an operator's cancel stops: the copy is not made yet.
CANCELLABLE_STATES = frozenset({SyncState.PENDING, SyncState.ASSIGNED, SyncState.TRANSFERRING})


def can_move(current: SyncState | None, new: SyncState) -> bool:
    """True when ``current -> new`` is allowed; a new (image, region) starts pending or deleting."""
    if current is None:
        return new in (SyncState.PENDING, SyncState.DELETING)
    return new in TRANSITIONS[current]
