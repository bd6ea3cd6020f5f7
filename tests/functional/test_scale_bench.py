"""bench/scale.py, run tiny so it does not rot: every phase ends and prints its figures.

A real coordinator process against the bench's fake glances and simulated agents (no
glance-api needed); the figures themselves are not asserted (no timed assertions),
only that each phase happened as the bench says.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_scale_bench_runs_every_phase_at_a_tiny_size(tmp_path: Path) -> None:
    images, agents = 450, 6
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--images", str(images), "--agents", str(agents),
         "--regions", "3", "--regions-per-image", "2", "--heartbeat", "1", "--reconcile-interval", "2", "--timeout", "600",
         "--dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=1200, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert f"{images} images, 3 regions (2 per image), {agents} agents online" in out
    # The first pass journaled every image's event, in more than one slice (200 per iteration).
    first = re.search(r"first reconciler pass \(journal empty\): [0-9.]+ s, (\d+) events journaled in (\d+) slices",
                      out)
    assert first and int(first[1]) == images and int(first[2]) >= 3, out
    restart = re.search(r"all (\d+) agents back [0-9.]+ s after the kill; peak (\d+) hellos/s, (\d+) hellos", out)
    assert restart and int(restart[1]) == agents and int(restart[3]) >= agents, out
    # Two regions named per image: every image planned for both (the queued tasks counted).
    assert "initial planning (from the restart until every image has its tasks)" in out
    steady = re.search(r"reconciler pass over the known journal: [0-9.]+ s \((\d+) events\)", out)
    assert steady and int(steady[1]) == 0, out  # converged: nothing to repair, nothing doubled
    assert re.search(r"journal [0-9.]+ MiB", out)
    log = (tmp_path / "run" / "coordinator.log").read_text()
    assert "Traceback" not in log
