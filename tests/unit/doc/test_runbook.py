"""doc/runbook.md covers every state and the failure reasons the code writes, and its index links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from glancesync.states import SyncState

ROOT_DIR = Path(__file__).resolve().parents[3]
RUNBOOK = (ROOT_DIR / "doc" / "runbook.md").read_text()
SOURCES = "\n".join(p.read_text() for d in ("agent", "coordinator", "glancesync") for p in (ROOT_DIR / d).rglob("*.py"))

# Fragments of failure reasons as the code writes them; the runbook quotes each.  When a
# reason's wording changes in the code, this test says which runbook entry to update.
REASONS = [
    "is not in known_hosts file", "does not match", "refused key", "permission denied on",
    "is outside the store directory", "is a symbolic link", "is not a regular file",
    "has no file:// location to copy from", "changed while it was opened", "not found on",
    "cannot connect to", "exited with status", "no new byte for", "work dir full writing",
    "another attempt still writes", "before reporting a result", "(scp_copy_timeout);",
    "lapsed on attempt", "has no such image", "registration_retry_horizon", "the cascading image no longer exists",
    "superseded by a delete", "the image was deleted in this region", "glance never re-creates a deleted or",
    "another upload or import running", "before its last byte", "refused by the image schema", "properties refused",
    "has 0 bytes", "not active; nothing to copy", "metadata applied, but the region has no verified and registered copy",
    "a copy task must come first", "task cannot be sent", "its bytes cannot be verified",
    "os_hash_value cannot be compared", "unsupported hashing algorithm", "unsupported os_hash_algo",
]


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("state", [s for s in SyncState if s is not SyncState.SYNCED], ids=str)
def test_every_state_but_synced_has_an_entry(state):
    assert f"`{state.value}`" in RUNBOOK


@pytest.mark.parametrize("reason", REASONS)
def test_each_failure_reason_is_written_by_the_code_and_quoted_by_the_runbook(reason):
    assert reason in SOURCES, f"the code no longer writes {reason!r}: update doc/runbook.md"
    assert reason in RUNBOOK.replace("\n", " "), f"doc/runbook.md does not say what to do about {reason!r}"


def test_every_link_of_the_index_reaches_an_entry():
    headings = {slug(h) for h in re.findall(r"^#{2,4} (.+)$", RUNBOOK, re.M)}
    anchors = re.findall(r"\]\(#([a-z0-9-]+)\)", RUNBOOK)
    assert len(anchors) >= 30
    assert not [a for a in anchors if a not in headings]
    outbox = (ROOT_DIR / "doc" / "outbox.md").read_text()
    for anchor in re.findall(r"runbook\.md#([a-z0-9-]+)", outbox):
        assert anchor in headings
