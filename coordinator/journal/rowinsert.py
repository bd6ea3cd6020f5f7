"""Journal, many rows into one table as plain tuples: the bulk inserts of planning (planmany.py).

Planning a new image for 500 regions writes 500 task rows and 500 (image, region) rows.
Given as dicts to a Core ``insert()``, SQLAlchemy builds and checks a parameter dict per
row and runs it through the column types, which cost about as much as SQLite's own
insert with every index kept.  On SQLite the statement is compiled once per table and
column list and the rows go to the driver as one ``executemany`` of tuples: no type
processing is lost (the columns written are text, numbers and bytes, which the sqlite3
module binds as they are).  The other databases keep the Core insert, whose
``insertmanyvalues`` batches the rows into multi-row statements there (a plain
``executemany`` would be a round trip per row on psycopg2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_COMPILED: dict[tuple[str, tuple[str, ...]], tuple[str, tuple[int, ...]]] = {}


def _statement(conn: Connection, table: sa.Table, columns: tuple[str, ...]) -> tuple[str, tuple[int, ...]]:
    """The insert's SQL for the driver and, per placeholder, the index of its value in a row."""
    key = (table.name, columns)
    found = _COMPILED.get(key)
    if found is None:
        compiled = table.insert().compile(dialect=conn.dialect, column_keys=list(columns))
        binds = list(compiled.positiontup or ())
        if sorted(binds) != sorted(columns):  # a column SQLAlchemy would fill itself (its default)
            raise ValueError(f"{table.name}: the insert binds {binds}, not {columns}")
        order = tuple(columns.index(name) for name in binds)
        found = _COMPILED[key] = (str(compiled), order)
    return found


def insert_rows(conn: Connection, table: sa.Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    """``rows`` (values in ``columns`` order, every column without a server default named) into ``table``."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    sql, order = _statement(conn, table, columns)
    if order != tuple(range(len(columns))):
        rows = [tuple(row[i] for i in order) for row in rows]
    conn.exec_driver_sql(sql, list(rows))
