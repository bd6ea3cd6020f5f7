"""Journal, one loop iteration's reports of one kind written together: a statement per table, not per report.

The loop gathers the ``ack``\\ s, ``done``\\ s, registrations that succeeded and hand-outs of
one iteration and applies each kind with one call here (``ack_many``, ``done_many``,
``finish_many``, ``assign_many``).  Each report is first checked in memory against the
row of its running task (``livetasks``) and against ``glancesync.states.can_move``;
those that pass are written in one savepoint: one ``UPDATE tasks ... WHERE task_id AND
state AND attempt`` and one ``UPDATE image_regions ... WHERE task_id AND state`` for
all of them (``executemany``; on PostgreSQL, whose driver does not count the rows of an
executemany, the same compiled statement once per row), still compare-and-set.

When the rows touched fall short of the reports (another process changed a task, the
region follows another task, the same task twice), the savepoint rolls back and every
report of the call is applied one at a time through the single-report path
(``TaskStateMixin.ack``, ``done``...), which judges each on its own exactly as before:
one stale report never undoes the others.  Reports the table does not hold, or that
need more than the common case (an update's ``done``, a delete's registration), take
that path directly.  The in-memory tables change as for one report
(``TaskStateMixin._task_changed``), after the statements succeeded and inside the
savepoint, so a rollback of it or of the whole batch undoes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coordinator.journal.base import (
    FINAL_TASK_STATES,
    ShortWrite,
    TaskRow,
    byte_count,
    execute_all,
    pack,
    region_state_for,
    task_copy,
)
from coordinator.journal.taskstate import split_change
from coordinator.schema import image_regions, tasks
from glancesync.exceptions import GlanceSyncError, StaleAttempt
from glancesync.states import SyncState, can_move

S = SyncState
# One report's outcome: the task's row after the change (or None), or why it was not applied.
Outcome = TaskRow | None | GlanceSyncError

# Which (image, region) of these images have an unfinished task: built once, the ids bound.
_UNFINISHED_OF = sa.select(tasks.c.image_id, tasks.c.region).where(
    tasks.c.image_id.in_(sa.bindparam("ids", expanding=True)), tasks.c.state.not_in(FINAL_TASK_STATES))

@dataclasses.dataclass
class _Move:
    task: TaskRow
    new: SyncState
    values: dict[str, Any]
    mirrored: dict[str, Any] = dataclasses.field(default_factory=dict)
    region_from: SyncState | None = None
    region_to: SyncState | None = None


def _where(table: sa.Table, names: Sequence[str]) -> list[Any]:
    return [table.c[name] == sa.bindparam(f"w_{name}") for name in names]


class BulkMixin:
    """The bulk side of ``TaskStateMixin`` on the same journal."""

    _bulk_statements: dict[tuple[str, tuple[str, ...]], Any] | None = None
    # (dialect, table, keys) -> the UPDATE's SQL for that dialect and how a row's parameters go to its driver.
    _driver_statements: dict[tuple[str, str, tuple[str, ...]], tuple[str, Callable[[dict[str, Any]], Any]]] | None = None

    def _statement(self, table: sa.Table, keys: tuple[str, ...]) -> Any:
        """The compare-and-set UPDATE of ``table`` setting ``keys``, built once per shape."""
        cache = self._bulk_statements
        if cache is None:
            cache = self._bulk_statements = {}
        found = cache.get((table.name, keys))
        if found is None:
            where = ("task_id", "state", "attempt") if table is tasks else ("image_id", "region", "task_id", "state")
            found = cache[table.name, keys] = table.update().where(*_where(table, where)).values(
                {key: sa.bindparam(f"v_{key}") for key in keys})
        return found

    def _execute_all(self, conn: Connection, table: sa.Table, keys: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
        """``execute_all`` of the compare-and-set UPDATE, its SQL compiled once per dialect and shape.

        SQLAlchemy's executemany runs each row's parameters through the compiled statement
        (half the CPU of the statement on SQLite); here each row goes to the driver as the
        tuple or mapping its paramstyle takes, through the same type processors.  Where the
        driver counts no rows of an executemany (psycopg2), ``execute_all`` runs it per row.
        """
        if not conn.dialect.supports_sane_multi_rowcount:
            execute_all(conn, self._statement(table, keys), rows)
            return
        cache = self._driver_statements
        if cache is None:
            cache = self._driver_statements = {}
        form = cache.get((conn.dialect.name, table.name, keys))
        if form is None:
            form = cache[conn.dialect.name, table.name, keys] = _driver_form(self._statement(table, keys), conn)
        sql, convert = form
        if conn.exec_driver_sql(sql, [convert(row) for row in rows]).rowcount != len(rows):
            raise ShortWrite

    def _write_moves(self, conn: Connection, moves: list[_Move], now: float) -> None:
        """Both tables' UPDATEs for ``moves`` (grouped by the columns they set); ShortWrite if any fell short."""
        by_shape: dict[tuple[tuple[str, ...], tuple[str, ...]], list[_Move]] = {}
        for move in moves:
            by_shape.setdefault((tuple(sorted(move.values)), tuple(sorted(move.mirrored))), []).append(move)
        for (task_keys, region_keys), group in by_shape.items():
            self._execute_all(conn, tasks, task_keys, [
                {"w_task_id": m.task.task_id, "w_state": m.task.state.value, "w_attempt": m.task.attempt,
                 **{f"v_{k}": m.values[k] for k in task_keys}} for m in group])
            self._execute_all(conn, image_regions, region_keys, [
                {"w_image_id": m.task.image_id, "w_region": m.task.region, "w_task_id": m.task.task_id,
                 "w_state": m.region_from.value, **{f"v_{k}": m.mirrored[k] for k in region_keys}} for m in group])
        for move in moves:
            self._task_changed(move.task, move.new, move.values)
            self._count_region(move.task.region, move.region_from.value, move.region_to.value)

    def _move(self, task: TaskRow, new: SyncState, now: float, values: dict[str, Any]) -> _Move | None:
        """``task -> new`` as one row of a bulk write, or None when it needs the single-report path."""
        if not can_move(task.state, new) or (task.kind == "update" and new == S.SYNCED):
            return None
        values, mirrored = split_change(new, now, values)
        region_from, region_to = region_state_for(task, task.state), region_state_for(task, new)
        if region_from != region_to and not can_move(region_from, region_to):
            return None
        mirrored.update(state=region_to.value, updated_at=now)
        if region_to == S.SYNCED:
            mirrored["synced_at"] = now
        return _Move(task, new, values, mirrored, region_from, region_to)

    def _many(self, items: Sequence[Any], now: float, task_id: Callable[[Any], str],
              prepare: Callable[[Any], _Move | None], one: Callable[[Any], Outcome],
              then: Callable[[Connection, list[_Move]], None] | None = None) -> list[Outcome]:
        """Apply ``items`` together when every prepared one goes through, else each with ``one``."""
        moves: dict[int, _Move] = {}
        seen: set[str] = set()
        for index, item in enumerate(items):
            move = prepare(item) if task_id(item) not in seen else None
            seen.add(task_id(item))
            if move is not None:
                moves[index] = move
        if len(moves) < 2 or not self._together(list(moves.values()), now, then):
            moves = {}
        outcomes: list[Outcome] = []
        for index, item in enumerate(items):
            if index in moves:
                move = moves[index]
                fields = {k: v for k, v in move.values.items() if k in _ROW_FIELDS}
                fields.pop("report", None)
                outcomes.append(task_copy(move.task, **{**fields, "state": move.new}))
                continue
            try:
                outcomes.append(one(item))
            except GlanceSyncError as exc:  # StaleAttempt, or a JournalError of this report alone
                outcomes.append(exc)
        return outcomes

    def _together(self, moves: list[_Move], now: float, then: Callable[[Connection, list[_Move]], None] | None) -> bool:
        try:
            with self.transaction() as conn:
                self._write_moves(conn, moves, now)
                if then is not None:
                    then(conn, moves)
        except (ShortWrite, StaleAttempt):
            return False
        return True

    # -- the kinds of reports -------------------------------------------------------------

    def ack_many(self, reports: Sequence[tuple[str, int]], now: float) -> list[Outcome]:
        """``ack`` of each (task_id, attempt); per report, in order: None (applied) or why not."""
        def prepare(report: tuple[str, int]) -> _Move | None:
            task = self._live_row(report[0], report[1], [S.ASSIGNED])
            return None if task is None else self._move(task, S.TRANSFERRING, now, {"started_at": now})

        outcomes = self._many(reports, now, lambda r: r[0], prepare, lambda r: self.ack(r[0], r[1], now))
        return [o if isinstance(o, GlanceSyncError) else None for o in outcomes]

    def done_many(self, reports: Sequence[tuple[str, int, dict[str, Any]]], now: float,
                  started: Collection[str] = ()) -> list[Outcome]:
        """``done`` of each (task_id, attempt, report): the task's row after it, or why not.

        ``started``: tasks whose ``ack`` of that attempt came with the done and is written with
        it (``started_at``), from ``assigned`` straight to the done's state.
        """
        def prepare(item: tuple[str, int, dict[str, Any]]) -> _Move | None:
            task_id, attempt, report = item
            task = self._live_row(task_id, attempt, [S.ASSIGNED, S.TRANSFERRING])
            size = report.get("size")
            if task is None or task.kind == "update" or (size is not None and not _byte_count_ok(size)):
                return None
            extra = {"bytes_done": size, "bytes_total": size} if isinstance(size, int) else {}
            if task_id in started and task.state == S.ASSIGNED:
                extra["started_at"] = now
            return self._move(task, S.REGISTERING, now, dict(
                report=pack(report), lease_expires=None, not_before=0.0, register_retries=0,
                register_failing_since=None, **extra))

        outcomes = self._many(reports, now, lambda r: r[0], prepare,
                              lambda r: self.done(r[0], r[1], r[2], now, acked=r[0] in started))
        # The report as the registration reads it (a row from the single path already has it).
        return [task_copy(o, report=dict(item[2])) if isinstance(o, TaskRow) and o.report is None else o
                for o, item in zip(outcomes, reports, strict=True)]

    def finish_many(self, results: Sequence[tuple[str, int, str | None]], now: float) -> list[Outcome]:
        """``finish`` of each (task_id, attempt, os_hash_value): registrations that succeeded."""
        def prepare(item: tuple[str, int, str | None]) -> _Move | None:
            task = self._live_row(item[0], item[1], [S.REGISTERING])
            if task is None or task.kind == "delete":
                return None
            return self._move(task, S.SYNCED, now, dict(finished_at=now, os_hash_value=item[2],
                                                        copy_registered_at=now, metadata_applied_at=now))

        def advance(conn: Connection, moves: list[_Move]) -> None:
            # One read for all: which of these (image, region) have another task to run next.
            images = sorted({m.task.image_id for m in moves})
            waiting = set()
            for start in range(0, len(images), 500):
                waiting.update(conn.execute(_UNFINISHED_OF, {"ids": images[start:start + 500]}).all())
            for move in moves:
                if (move.task.image_id, move.task.region) in waiting:
                    self._advance(conn, move.task.image_id, move.task.region, now, finished=move.region_to)

        outcomes = self._many(results, now, lambda r: r[0], prepare,
                              lambda r: self.finish(r[0], r[1], now, r[2]), then=advance)
        return [o if isinstance(o, GlanceSyncError) else None for o in outcomes]

    def assign_many(self, picks: Sequence[tuple[TaskRow, str, float]], now: float) -> list[Outcome]:
        """Hand each pending (task as just read, agent_id, lease_expires) out: attempt + 1."""
        def prepare(pick: tuple[TaskRow, str, float]) -> _Move | None:
            task, agent_id, expires = pick
            if task.state != S.PENDING:
                return None
            return self._move(task_copy(task), S.ASSIGNED, now, dict(
                attempt=task.attempt + 1, agent_id=agent_id, lease_expires=expires, bytes_done=0, last_error=None))

        return self._many(picks, now, lambda p: p[0].task_id, prepare,
                          lambda p: self.assign(p[0].task_id, p[1], now, p[2], p[0]))


def _driver_form(statement: Any, conn: Connection) -> tuple[str, Callable[[dict[str, Any]], Any]]:
    """``statement`` (bound values only, no column default) compiled for ``conn``'s dialect:
    its SQL, and one row's parameters as the driver takes them."""
    compiled = statement.compile(dialect=conn.dialect)
    processors = compiled._bind_processors  # the column types' conversions, as SQLAlchemy applies them
    names = list(compiled.positiontup) if compiled.positional else list(compiled.bind_names.values())
    steps = [(name, processors.get(name)) for name in names]
    if compiled.positional:
        return compiled.string, lambda row: tuple(row[n] if step is None else step(row[n]) for n, step in steps)
    return compiled.string, lambda row: {n: row[n] if step is None else step(row[n]) for n, step in steps}


_ROW_FIELDS = frozenset(f.name for f in dataclasses.fields(TaskRow)) - {"state"}


def _byte_count_ok(value: Any) -> bool:
    try:
        byte_count("size", value)
    except GlanceSyncError:
        return False
    return True
