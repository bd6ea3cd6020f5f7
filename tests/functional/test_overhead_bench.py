"""bench/overhead.py, run tiny against its fake glances so it does not rot.

A real coordinator process, the bench's fake glances and simulated agents (no glance-api);
the figures are not asserted (no timed assertions), only that every (image, region) pair
was measured and the figures printed beside the target.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_overhead_bench_measures_every_image_and_region_of_the_fake_back_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead.py"), "--skip", "real", "--images", "5", "--warmup", "1",
         "--regions", "3", "--per-image", "2", "--gap", "0", "--dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    # 4 images measured (one left out as warm-up), each registered in 2 regions.
    found = re.search(r"fake glances .*: overhead p50 [0-9.]+ ms, p99 [0-9.]+ ms, max [0-9.]+ ms over (\d+) "
                      r"\(image, region\) pairs; target p50 < 100 ms", out)
    assert found and int(found[1]) == 8, out
    assert re.search(r"event -> task at the agent p50 [0-9.]+ ms", out), out
    log = (tmp_path / "run" / "fake" / "coordinator.log").read_text()
    assert "Traceback" not in log
