"""The demo's run directories: one per run, ``<base>/<UTC timestamp>/``, and ``<base>/latest``.

A rerun of the demo used to delete the previous run's configs and logs.  Now each
run gets a directory of its own named by its start time, ``latest`` is a relative
symlink to the newest (replaced atomically), and only the oldest runs beyond
``keep`` are removed.  Entries that are not run directories (another tool's files,
the single-directory layout of earlier versions) are never touched.  The time is
passed in so the tests choose it.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime
from pathlib import Path

LATEST = "latest"
RUN_NAME = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
TIME_FORMAT = "%Y%m%dT%H%M%SZ"


def _sort_key(name: str) -> tuple[str, int]:
    stamp, _, suffix = name.partition("-")
    return stamp, int(suffix or 0)


def runs(base: Path) -> list[Path]:
    """The run directories under ``base``, oldest first."""
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if RUN_NAME.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: _sort_key(p.name))


def new_run_dir(base: Path, now: datetime, keep: int = 5) -> Path:
    """Make the directory of a run started at ``now`` (UTC), point ``latest`` at it, prune old runs.

    ``keep`` counts the runs kept, this one included; 0 keeps every run.
    """
    base.mkdir(parents=True, exist_ok=True)
    latest = base / LATEST
    if latest.exists() and not latest.is_symlink():
        raise FileExistsError(f"{latest} exists and is not a symlink; move it away")
    stamp = now.strftime(TIME_FORMAT)
    run, n = base / stamp, 1
    while True:
        try:
            run.mkdir()
            break
        except FileExistsError:  # two runs in one second
            run, n = base / f"{stamp}-{n}", n + 1
    tmp = base / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.name)
    os.replace(tmp, latest)  # atomic: latest always names a whole run
    if keep > 0:
        for old in runs(base)[:-keep]:
            if old != run:
                shutil.rmtree(old, ignore_errors=True)
    return run
