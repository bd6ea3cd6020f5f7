"""Seed a migrated journal with finished work, fast, for the status bench.

``synced_tasks(url, regions, count)`` writes ``count`` synced copy tasks spread over
``regions`` (one image per ``len(regions)`` tasks), their ``image_regions`` rows and
one planned ``uploaded`` event per image, in bulk inserts: what a journal looks
like after that much work, without running it through the loop.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa

from bench import fakeglance
from coordinator.journal import pack
from coordinator.schema import events, image_regions, tasks

CHUNK = 5000


def _rows(regions: list[str], count: int, now: float) -> tuple[list[dict], list[dict], list[dict]]:
    task_rows: list[dict[str, Any]] = []
    region_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    image_id = ""
    payload = b""
    for seq in range(count):
        if seq % len(regions) == 0:
            image_id = str(uuid.uuid4())
            event_id = uuid.uuid4().hex
            image = fakeglance.record(image_id, "/srv/store")
            payload = pack({"image": image, "source": {"type": "sftp", "path": f"/srv/store/{image_id}"}})
            event_rows.append({"event_id": event_id, "kind": "uploaded", "image_id": image_id,
                               "payload": pack({"event_id": event_id}), "received_at": now, "planned": True,
                               "planned_at": now})
        region = regions[seq % len(regions)]
        task_id = uuid.uuid4().hex
        task_rows.append({"task_id": task_id, "seq": seq + 1, "image_id": image_id, "region": region,
                          "kind": "copy", "state": "synced", "attempt": 1, "agent_id": "sim", "not_before": 0.0,
                          "retries": 0, "bytes_done": 1024, "bytes_total": 1024, "payload": payload,
                          "event_id": event_id, "created_at": now, "updated_at": now, "finished_at": now})
        region_rows.append({"image_id": image_id, "region": region, "state": "synced", "task_id": task_id,
                            "attempts": 1, "bytes_done": 1024, "bytes_total": 1024, "updated_at": now,
                            "synced_at": now, "copy_registered_at": now, "metadata_applied_at": now})
    return task_rows, region_rows, event_rows


def synced_tasks(url: str, regions: list[str], count: int) -> None:
    engine = sa.create_engine(url)
    task_rows, region_rows, event_rows = _rows(regions, count, time.time())
    with engine.begin() as conn:
        for table, rows in ((tasks, task_rows), (image_regions, region_rows), (events, event_rows)):
            for start in range(0, len(rows), CHUNK):
                conn.execute(table.insert(), rows[start:start + CHUNK])
    engine.dispose()
