"""How a regional image's metadata differs from the cascading image's.

One rule for the agent (an update task makes the copy follow) and the coordinator's
reconciler (a pass finds copies whose metadata drifted), so both agree on what a
difference is.
"""

from __future__ import annotations

from typing import Any

from glancesync import glance

# Core schema attributes: they can be replaced but never removed from an image.
CORE_FIELDS = frozenset(
    {"name", "disk_format", "container_format", "visibility", "min_disk", "min_ram", "tags", "owner", "os_hidden"}
)
# Only settable while an image is queued: never patched on a copy that holds data.
CREATE_ONLY = frozenset({"disk_format", "container_format"})


def property_changes(cascading: dict[str, Any], regional: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What to set and which extra properties to remove so ``regional`` matches ``cascading``."""
    want = glance.copied_properties(cascading)
    have = glance.copied_properties(regional)
    changes = {
        key: value
        for key, value in want.items()
        if key not in CREATE_ONLY and _differs(value, have.get(key))
    }
    removes = sorted(key for key in have if key not in want and key not in CORE_FIELDS)
    return changes, removes


def _differs(want: Any, have: Any) -> bool:
    if isinstance(want, list) and isinstance(have, list):
        # tags are a set in glance: order is not a difference.
        return sorted(map(str, want)) != sorted(map(str, have))
    return want != have
