"""Journal, status queries: per-region counts, the view of one image, and what the metrics read."""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from coordinator.journal.base import unpack
from coordinator.schema import ASKED_SQL, ASKED_SQLITE, events, image_regions, tasks
from glancesync.states import SyncState

S = SyncState
# Event ids of an operator's sync (coordinator/operator.py ORIGIN); schema.ASKED_SQL matches them.
ASKED_PREFIX = "operator-"
_HELD = (S.ASSIGNED.value, S.TRANSFERRING.value)
# Which summary column each state counts in.
_GROUPS = {S.PENDING.value: "queued", S.ASSIGNED.value: "in_flight", S.TRANSFERRING.value: "in_flight",
           S.REGISTERING.value: "in_flight", S.DELETING.value: "in_flight", S.SYNCED.value: "synced",
           S.FAILED.value: "failed"}


class ViewsMixin:
    """Read-only queries for the status reply (and the holders of an image, for coordinator/sources.py)."""

    _count_table: dict[str, dict[str, int]] | None = None
    # Sets the counters note changes in (watch_counts).
    _count_watchers: tuple[set[str | None], ...] = ()

    def watch_counts(self) -> set[str | None]:
        """A set the journal adds each region to whose counts change (on commit), and None when
        every count is read afresh; its owner empties it (coordinator/statuscache.py)."""
        watcher: set[str | None] = {None}
        self._count_watchers = (*self._count_watchers, watcher)
        return watcher

    def _counts(self) -> dict[str, dict[str, int]]:
        """(image, region) rows per region per state: read once, then kept by ``_count_region``."""
        if self._count_table is None:
            for watcher in self._count_watchers:
                watcher.add(None)
            query = (sa.select(image_regions.c.region, image_regions.c.state, sa.func.count())
                     .group_by(image_regions.c.region, image_regions.c.state))
            table: dict[str, dict[str, int]] = {}
            with self.reading() as conn:
                for region, state, count in conn.execute(query).all():
                    table.setdefault(region, {})[state] = count
            self._count_table = table
        return self._count_table

    def _count_region(self, region: str, old: str | None, new: str) -> None:
        """An (image, region) row moved from ``old`` (None: a new row) to ``new``; counted on commit."""
        if self._count_table is None or old == new:
            return

        def count() -> None:
            states = self._count_table.setdefault(region, {}) if self._count_table is not None else {}
            if old is not None:
                states[old] = states.get(old, 0) - 1
            states[new] = states.get(new, 0) + 1
            for watcher in self._count_watchers:
                watcher.add(region)

        self.on_commit(count)

    def region_counts(self) -> dict[str, dict[str, int]]:
        """Per region: queued (pending), in_flight, synced and failed (image, region) pairs.

        From counters in memory, kept on every committed state change: no SQL once
        they are read, whatever the size of the journal.
        """
        counts: dict[str, dict[str, int]] = {}
        for region, states in self._counts().items():
            bucket = counts.setdefault(region, {"queued": 0, "in_flight": 0, "synced": 0, "failed": 0})
            for state, count in states.items():
                name = _GROUPS.get(state)
                if name:
                    bucket[name] += count
        return counts

    def region_count(self, region: str) -> dict[str, int]:
        """``region_counts()[region]`` alone, zeros for a region without rows."""
        bucket = {"queued": 0, "in_flight": 0, "synced": 0, "failed": 0}
        for state, count in self._counts().get(region, {}).items():
            name = _GROUPS.get(state)
            if name:
                bucket[name] += count
        return bucket

    def image_view(self, image_id: str) -> tuple[bool, dict[str, dict[str, Any]]]:
        """(known, per-region rows) for one image; known when any event or region names it."""
        query = (sa.select(image_regions, tasks.c.kind, tasks.c.agent_id, tasks.c.not_before)
                 .select_from(image_regions.outerjoin(tasks, tasks.c.task_id == image_regions.c.task_id))
                 .where(image_regions.c.image_id == image_id))
        with self.reading() as conn:
            rows = conn.execute(query).all()
            seen = conn.execute(sa.select(events.c.event_id).where(events.c.image_id == image_id)).first()
        regions = {}
        for r in rows:
            bytes_done, bytes_total = r.bytes_done, r.bytes_total
            noted = self._progress.get(r.task_id) if r.state in _HELD else None
            if noted is not None:  # a progress report not written yet (TaskStateMixin.progress)
                bytes_done, bytes_total = noted[3], noted[4]
            regions[r.region] = {
                "state": r.state, "task_kind": r.kind, "task_id": r.task_id, "bytes_done": bytes_done,
                "bytes_total": bytes_total, "attempts": r.attempts, "last_error": r.last_error,
                "agent_id": r.agent_id, "updated_at": r.updated_at, "synced_at": r.synced_at,
                # The two facts ``synced`` needs (doc/states.md); status shows which is missing.
                "copy_registered": r.copy_registered_at is not None,
                "metadata_applied": r.metadata_applied_at is not None,
                # When a pending task is due (its retry backoff); status says what it waits for.
                "retry_at": r.not_before if r.state == S.PENDING.value else None,
            }
        return bool(rows) or seen is not None, regions

    def unplanned_count(self, image_id: str) -> int:
        """How many events of ``image_id`` wait for planning."""
        query = sa.select(sa.func.count()).select_from(events).where(
            events.c.image_id == image_id, events.c.planned.is_(False))
        with self.reading() as conn:
            return int(conn.execute(query).scalar() or 0)

    def known_image_ids(self) -> set[str]:
        """Every image id any event or regional record names (for the reconciler)."""
        with self.reading() as conn:
            seen = {row[0] for row in conn.execute(sa.select(events.c.image_id).distinct())}
            seen |= {row[0] for row in conn.execute(sa.select(image_regions.c.image_id).distinct())}
        return seen

    def waiting_image_ids(self) -> set[str]:
        """Ids with an event journaled and not planned yet (for the reconciler: its plan decides)."""
        query = sa.select(events.c.image_id).distinct().where(events.c.planned.is_(False))
        with self.reading() as conn:
            return {row[0] for row in conn.execute(query)}

    def region_facts(self) -> dict[str, dict[str, tuple[str, float]]]:
        """image id -> region -> (state, updated_at) of every regional record (for the reconciler)."""
        query = sa.select(image_regions.c.image_id, image_regions.c.region, image_regions.c.state,
                          image_regions.c.updated_at)
        facts: dict[str, dict[str, tuple[str, float]]] = {}
        with self.reading() as conn:
            for image_id, region, state, updated_at in conn.execute(query):
                facts.setdefault(image_id, {})[region] = (state, updated_at)
        return facts

    def asked_regions(self, image_id: str | Collection[str] | None = None) -> dict[str, set[str]]:
        """image id -> regions an operator's ``sync`` sent a copy to (its event id starts ``operator-``).

        Those copies are never removed for being untargeted.  Known while the task rows are
        kept (``glance-sync-manage purge`` forgets finished tasks older than its ``--days``).
        """
        # SQLite's LIKE ignores case, so it cannot walk ix_tasks_kind_event's range; GLOB
        # can, and matches case as the servers' LIKE does (binary collation on MySQL).  The
        # pattern is the partial index's own text (schema.py), which SQLite needs to take it.
        asked = sa.text(ASKED_SQLITE if self.engine.dialect.name == "sqlite" else ASKED_SQL)
        query = sa.select(tasks.c.image_id, tasks.c.region).distinct().where(tasks.c.kind == "copy", asked)
        if isinstance(image_id, str):
            queries = [query.where(tasks.c.image_id == image_id)]
        elif image_id is not None:  # several images: one read per 500
            ids = sorted(set(image_id))
            queries = [query.where(tasks.c.image_id.in_(ids[n:n + 500])) for n in range(0, len(ids), 500)]
        else:
            queries = [query]
        asked: dict[str, set[str]] = {}
        with self.reading() as conn:
            for one in queries:
                for found_id, region in conn.execute(one):
                    asked.setdefault(found_id, set()).add(region)
        return asked

    def tracked_image_ids(self) -> set[str]:
        """Ids with a regional record that is neither deleted nor being deleted."""
        query = (sa.select(image_regions.c.image_id).distinct()
                 .where(image_regions.c.state.notin_([S.DELETED.value, S.DELETING.value])))
        with self.reading() as conn:
            return {row[0] for row in conn.execute(query)}

    # -- for coordinator/metrics.py (read every few seconds, so each one is a single indexed query) --

    def oldest_pending(self) -> dict[str, float]:
        """Per region, when its oldest pending task was planned (the queue's lag)."""
        query = (sa.select(tasks.c.region, sa.func.min(tasks.c.created_at))
                 .where(tasks.c.state == S.PENDING.value).group_by(tasks.c.region))
        with self.reading() as conn:
            return {region: float(at) for region, at in conn.execute(query).all() if at is not None}

    def unplanned_total(self) -> int:
        """Events journaled (acked) and not planned yet."""
        query = sa.select(sa.func.count()).select_from(events).where(events.c.planned.is_(False))
        with self.reading() as conn:
            return int(conn.execute(query).scalar() or 0)

    def sqlite_bytes(self) -> int | None:
        """Bytes of the SQLite file and its WAL; None when the journal is not a SQLite file."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        return sum(os.path.getsize(path) for path in (url.database, url.database + "-wal")
                   if os.path.exists(path))

    def row_counts(self) -> dict[str, int]:
        """Rows of the tables that grow (events, tasks, image_regions), for a journal that is not a file.

        PostgreSQL and MySQL/MariaDB answer from their catalog's estimates (what ANALYZE or
        InnoDB's statistics last saw), which costs nothing; a ``count(*)`` would scan every
        row with the loop waiting.  Any other database is counted.
        """
        names = [table.name for table in (events, tasks, image_regions)]
        dialect = self.engine.dialect.name
        with self.reading() as conn:
            if dialect == "postgresql":
                query = sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)")
                rows = {name: conn.execute(query, {"name": name}).scalar() for name in names}
            elif dialect in ("mysql", "mariadb"):
                query = sa.text("SELECT table_name, table_rows FROM information_schema.tables "
                                "WHERE table_schema = DATABASE() AND table_name IN :names"
                                ).bindparams(sa.bindparam("names", expanding=True))
                rows = {str(name): count for name, count in conn.execute(query, {"names": names}).all()}
            else:
                rows = {table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                        for table in (events, tasks, image_regions)}
        # PostgreSQL says -1 for a table never analyzed yet.
        return {name: max(0, int(rows.get(name) or 0)) for name in names}

    def cache_holders(self, image_id: str) -> tuple[list[str], list[str]]:
        """(holders, soon) of ``image_id``: regions serving it from their agent's cache, earliest first,
        and regions about to (their copy cached, its first registration running).

        A holder's copy is synced (the registration: the coordinator read the regional
        image) and the ``done`` of that copy said ``cached``.  One indexed read
        (ix_tasks_image_region) per image.
        """
        live = (S.SYNCED.value, S.REGISTERING.value)
        query = (sa.select(tasks.c.region, tasks.c.state, tasks.c.report, tasks.c.finished_at,
                           tasks.c.register_retries)
                 .join(image_regions, sa.and_(image_regions.c.image_id == tasks.c.image_id,
                                              image_regions.c.region == tasks.c.region))
                 .where(tasks.c.image_id == image_id, tasks.c.kind == "copy", tasks.c.state.in_(live),
                        image_regions.c.state.in_(live))
                 .order_by(tasks.c.seq))
        latest: dict[str, tuple[str, float, bool]] = {}
        with self.reading() as conn:
            for region, state, report, finished, retries in conn.execute(query).all():
                cached = bool((unpack(report) or {}).get("cached"))
                if state == S.REGISTERING.value and retries:
                    cached = False  # a registration in backoff: not soon
                latest[region] = (state, finished or 0.0, cached)  # a later copy replaces an earlier one
        ordered = sorted(latest.items(), key=lambda item: item[1][1])
        holders = [region for region, (state, _, cached) in ordered if cached and state == S.SYNCED.value]
        soon = [region for region, (state, _, cached) in ordered if cached and state == S.REGISTERING.value]
        return holders, soon

    def running_copies(self) -> list[tuple[str, str, str]]:
        """(task_id, image_id, region) of every copy from the cascading store handed out and not ended.

        Read once at start (coordinator/sources.py counts them as in flight again); a
        snapshot's copy, which reads from the region that made it, is left out.
        """
        query = (sa.select(tasks.c.task_id, tasks.c.image_id, tasks.c.region, tasks.c.payload)
                 .where(tasks.c.state.in_(_HELD), tasks.c.kind == "copy").order_by(tasks.c.seq))
        with self.reading() as conn:
            rows = conn.execute(query).all()
        found = []
        for task_id, image_id, region, payload in rows:
            source = (unpack(payload) or {}).get("source")
            if isinstance(source, dict) and source.get("region") is None:
                found.append((task_id, image_id, region))
        return found
