"""The registrar's first stage: the regional images of copies reported done, read one listing per region.

Before a copy is registered, the coordinator reads the regional image itself (glance
is the truth, not the agent) and verifies it against the cascading one
(``glancejobs.verify_regional``).  Read one GET per copy, that is one HTTP request per
task; copies that finish together are many images of the same few regions, so this
stage reads them with one listing per region filtered by id (glance v2's ``id=in:``,
``glancejobs.list_regional``), in a job of the registrar's pool, never on the loop thread.

``add`` queues a copy; one reading job at a time takes every copy queued so far,
lists their regions, keeps what each listing showed for that copy's attempt, and
hands each copy on to its image's registration job (``then``), which takes the
record (``take``) and reads on its own whatever a listing did not show (a hidden
image, a listing that failed).  Inside ``gathering`` (one loop iteration) copies
wait, so that every copy reported done in the iteration goes in one job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from coordinator.journal import TaskRow

LOG = logging.getLogger(__name__)


class RegionalReads:
    """``submit(job)`` runs a job in the pool, ``list_region(region, image_ids)`` lists those images of
    that region (id -> record, called in the job), ``then(task)`` queues a copy for its image's registration."""

    def __init__(self, submit: Callable[[Callable[[], None]], Any],
                 list_region: Callable[[str, list[str]], dict[str, dict[str, Any]]],
                 then: Callable[[TaskRow], None]) -> None:
        self._submit = submit
        self._list_region = list_region
        self._then = then
        self._lock = threading.Lock()
        self._unread: list[TaskRow] = []
        self._queued = False
        self._gathering = False
        # (task_id, attempt) -> the regional record a listing showed after that attempt's done.
        self._listed: dict[tuple[str, int], dict[str, Any]] = {}

    def add(self, task: TaskRow) -> None:
        with self._lock:
            self._unread.append(task)
            if self._queued or self._gathering:
                return  # the queued job takes it along, or the end of ``gathering`` starts one
            self._queued = True
        self._submit(self._read)

    @contextlib.contextmanager
    def gathering(self) -> Iterator[None]:
        """Copies added inside wait until the end, then are read together."""
        self._gathering = True
        try:
            yield
        finally:
            with self._lock:
                self._gathering = False
                start = bool(self._unread) and not self._queued
                self._queued = self._queued or start
            if start:
                self._submit(self._read)

    def take(self, batch: list[TaskRow]) -> dict[str, dict[str, Any] | None]:
        """task_id -> the listed regional record of each copy of ``batch`` (None: read it now); used once."""
        with self._lock:
            return {t.task_id: self._listed.pop((t.task_id, t.attempt), None) for t in batch}

    def _read(self) -> None:
        with self._lock:
            unread, self._unread, self._queued = self._unread, [], False
        by_region: dict[str, list[TaskRow]] = {}
        for task in unread:
            by_region.setdefault(task.region, []).append(task)
        for region, group in by_region.items():
            try:
                listed = self._list_region(region, [t.image_id for t in group])
            except Exception as exc:  # each copy is then read on its own by its image's job
                LOG.info("region %s: regional images not listed (%s); read one by one", region, exc)
                continue
            with self._lock:
                for task in group:
                    if task.image_id in listed:
                        self._listed[task.task_id, task.attempt] = listed[task.image_id]
            LOG.info("region %s: %d of %d regional image(s) read with one listing", region,
                     sum(t.image_id in listed for t in group), len(group))
        for task in unread:
            self._then(task)
