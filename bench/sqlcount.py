"""Runs glance-sync-coordinator counting the SQL statements it sends (for bench/control.py).

``python bench/sqlcount.py OUT --config-file ...``: the coordinator's own ``main``,
with a SQLAlchemy ``before_cursor_execute`` hook on every engine that counts
statements by kind (SELECT, INSERT, UPDATE, SAVEPOINT...) and how many of them were
``executemany``; the counts go to the JSON file OUT when the coordinator stops.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

COUNTS: Counter[str] = Counter()


@event.listens_for(Engine, "before_cursor_execute")
def _count(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, executemany: bool) -> None:
    COUNTS[statement.lstrip().split(None, 1)[0].upper()] += 1
    COUNTS["total"] += 1
    if executemany:
        COUNTS["executemany"] += 1


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    from coordinator import cmd

    try:
        return cmd.main(argv)
    finally:
        Path(out).write_text(json.dumps(COUNTS))


if __name__ == "__main__":
    sys.exit(main())
