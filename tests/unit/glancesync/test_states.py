"""glancesync.states: the transitions table."""

from __future__ import annotations

import pytest

from glancesync.states import ACTIVE_STATES, FINAL_STATES, TRANSITIONS, SyncState, can_move

S = SyncState


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(SyncState)


def test_states_are_their_strings() -> None:
    assert S.SYNCED == "synced"
    assert S("transferring") is S.TRANSFERRING


@pytest.mark.parametrize("new", list(SyncState))
def test_deleted_moves_only_to_a_new_copy(new: SyncState) -> None:
    # A copy after an operator purged the id in the region; never a delete of a deleted copy.
    assert can_move(S.DELETED, new) is (new == S.PENDING)


@pytest.mark.parametrize("new", list(SyncState))
def test_a_new_pair_starts_pending_or_deleting(new: SyncState) -> None:
    assert can_move(None, new) is (new in (S.PENDING, S.DELETING))


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.PENDING, S.ASSIGNED),
        (S.ASSIGNED, S.TRANSFERRING),
        (S.TRANSFERRING, S.REGISTERING),
        (S.REGISTERING, S.SYNCED),
        # a lapsed lease or a retryable failure goes back to the queue
        (S.ASSIGNED, S.PENDING),
        (S.TRANSFERRING, S.PENDING),
        (S.FAILED, S.PENDING),
        # an update of a synced image
        (S.SYNCED, S.PENDING),
        (S.TRANSFERRING, S.FAILED),
        (S.SYNCED, S.DELETING),
        (S.DELETING, S.DELETED),
    ],
)
def test_allowed(current: SyncState, new: SyncState) -> None:
    assert can_move(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.PENDING, S.SYNCED),
        (S.PENDING, S.TRANSFERRING),
        (S.SYNCED, S.TRANSFERRING),
        (S.FAILED, S.SYNCED),
        (S.DELETING, S.PENDING),
        (S.DELETING, S.SYNCED),
    ],
)
def test_refused(current: SyncState, new: SyncState) -> None:
    assert not can_move(current, new)


@pytest.mark.parametrize("state", [s for s in SyncState if s is not S.DELETED])
def test_every_live_state_can_be_deleted(state: SyncState) -> None:
    assert can_move(state, S.DELETING)


def test_active_and_final_partition_the_states() -> None:
    assert ACTIVE_STATES.isdisjoint(FINAL_STATES)
    assert ACTIVE_STATES | FINAL_STATES == set(SyncState)
