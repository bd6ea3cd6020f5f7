"""Fuzzing what an agent parses: the task's source and image record, and its region's glance answers.

Only the project's documented errors (GlanceError, SourceRefused: GlanceSyncError
subclasses with ``retryable``) may come out; run_task turns those into reports.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent import transfer, upload
from glancesync import imagediff
from glancesync import verify as check
from glancesync.exceptions import GlanceError, SourceRefused, VerificationError
from glancesync.storemap import SshStore
from tests.unit.fuzz import FUZZ, IMAGE_ID, json_maps, scalars, values

STORE = SshStore("h", 22, "u", "k", "kh", "/store")
fields = ("id", "status", "size", "checksum", "os_hash_value", "name", "tags", "visibility", "os_hidden",
          "disk_format", "min_ram", "os_glance_importing_to_stores", "protected")
records = st.fixed_dictionaries({}, optional={
    **{name: scalars | values for name in fields},
    "status": st.sampled_from(["active", "queued", "saving", "deactivated", "killed", "deleted"]) | scalars,
}) | json_maps


@FUZZ
@given(regional=st.none() | records, image=records)
def test_a_regional_image_of_any_shape_is_a_decision_or_a_glance_error(regional: Any, image: dict) -> None:
    try:
        assert upload.existing_copy(regional, image, "http://r") in ("done", "rehash", "upload", "create")
    except (GlanceError, VerificationError):
        pass
    verified = check.Digest.of_record({"id": IMAGE_ID, **image}, "verified file")
    try:
        upload.check_uploaded(regional, verified, "/nonexistent/part", IMAGE_ID, "http://r")
    except (GlanceError, VerificationError):
        pass


@FUZZ
@given(cascading=records, regional=records)
def test_property_changes_of_any_two_records(cascading: dict, regional: dict) -> None:
    changes, removes = imagediff.property_changes(cascading, regional)
    assert not set(changes) & imagediff.CREATE_ONLY and all(isinstance(k, str) for k in removes)


@FUZZ
@given(source=st.fixed_dictionaries({}, optional={
    "type": st.just("sftp") | scalars,
    "path": st.sampled_from(["/store/x", "/store/../etc/passwd", "/store", "relative", "/store/a\x00b"]) | scalars,
}) | values)
def test_a_task_source_of_any_shape_is_a_store_path_or_refused(source: Any) -> None:
    try:
        path = transfer.checked_source(IMAGE_ID, source, STORE)
    except SourceRefused:
        return
    assert path.startswith("/store/") and ".." not in path.split("/")
