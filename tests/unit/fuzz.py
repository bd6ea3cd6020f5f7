"""Shared hypothesis settings and strategies for the fuzz tests of every decoder.

Kept small (a few dozen examples each, no example database on disk) so that the
whole unit suite stays quick on a busy two-core machine; the properties are the
point, and a failure prints the shrunk input to add as a plain regression test.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# GLANCE_SYNC_FUZZ_EXAMPLES=2000 for a deeper run by hand.
FUZZ = settings(max_examples=int(os.environ.get("GLANCE_SYNC_FUZZ_EXAMPLES", "60")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

IMAGE_ID = "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"

# Scalars as msgpack, JSON and YAML carry them, edge values included.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 10**9])
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", "../../../../etc/passwd", f"../images/{IMAGE_ID}", IMAGE_ID, "\x1b[2J", "null"])
)


def nested(leaves: st.SearchStrategy[Any] = scalars, keys: st.SearchStrategy[Any] | None = None,
           max_leaves: int = 16) -> st.SearchStrategy[Any]:
    """Lists and maps of ``leaves``, a few levels deep."""
    keys = keys if keys is not None else st.text(max_size=12)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=max_leaves,
    )


values = nested()
json_maps = st.dictionaries(st.text(max_size=16), values, max_size=8)
