"""Hostile input at the door of the real coordinator, and in what glance-sync-status prints.

- An event whose image id is a path (``../../../../etc/passwd``), not a glance id, is
  refused with an error reply quoting a short prefix, and nothing of it reaches the
  journal (so no glance URL is ever built from it).
- A last error carrying terminal escape sequences (as a hostile or broken peer could
  make one) is printed by the real ``glance-sync-status`` without a single control
  character.
"""

from __future__ import annotations

import sqlite3
import time

import msgpack

from glancesync import protocol
from tests.functional import helpers
from tests.functional.services import SyncServices, send_raw_to
from tests.harness.topology import Topology

TRAVERSAL = "../../../../etc/passwd"
HOSTILE_ERROR = "copy failed \x1b[2J\x1b]0;owned\x07\r\nfake line\x9b31m"


def raw_event(image_id: str) -> bytes:
    """An event frame built by hand: protocol.encode would refuse the id before sending."""
    body = {"event_id": protocol.new_id(), "kind": "uploaded", "image_id": image_id, "image": None}
    return msgpack.packb({"v": protocol.VERSION, "type": "event", "id": protocol.new_id(), "ts": time.time(),
                          "body": body}, use_bin_type=True)


def journal_rows(topo: Topology, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(f"file:{topo.journal_path}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(sql, args).fetchall()


def test_an_event_for_a_path_instead_of_an_image_id_is_refused_and_never_journaled(
        topology: Topology, sync: SyncServices) -> None:
    long_id = TRAVERSAL + "/" + "x" * 5000
    replies = send_raw_to(topology.client_port, [raw_event(TRAVERSAL), raw_event(long_id)], timeout=10)
    for reply in replies:
        assert reply is not None and reply.type == "error", reply
        assert reply.body["code"] == "bad_field" and "event.image_id" in reply.body["reason"]
        assert len(reply.body["reason"]) < 400  # a short prefix, not the 5 KB the peer sent
    assert "glance image id" in replies[0].body["reason"]
    assert journal_rows(topology, "SELECT count(*) FROM events WHERE image_id LIKE '%passwd%'") == [(0,)]
    # The coordinator still serves after the refusals.
    assert helpers.run_status(topology, "--json").returncode == 0


def test_status_prints_a_hostile_last_error_without_control_characters(
        topology: Topology, sync: SyncServices) -> None:
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
    helpers.wait_states(topology, image.id, "synced")
    region = topology.region_names[0]
    with sqlite3.connect(str(topology.journal_path), timeout=30) as conn:
        conn.execute("UPDATE image_regions SET last_error = ? WHERE image_id = ? AND region = ?",
                     (HOSTILE_ERROR, image.id, region))
    shown = helpers.run_status(topology, "image", image.id)
    assert shown.returncode == 0, shown.stderr
    assert "fake line" in shown.stdout  # the text is shown...
    printed = shown.stdout + shown.stderr
    controls = [c for c in printed if (ord(c) < 32 and c not in "\n") or 0x7f <= ord(c) < 0xa0]
    assert controls == [], repr(printed)  # ...but nothing a terminal would act on
    # The JSON view keeps the exact text for programs (JSON escapes it).
    data = helpers.image_regions(topology, image.id)
    assert data[region]["last_error"] == HOSTILE_ERROR
