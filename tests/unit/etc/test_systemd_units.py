"""The shipped systemd units pass ``systemd-analyze verify`` (where the machine has systemd-analyze).

The units name ``/usr/bin/glance-sync-*``, where a packaged install puts the
scripts; verify checks that the command exists, so the copy under test points at
the scripts of the running virtualenv instead.  Every other line is verified as
shipped: an unknown key or a bad value is printed as a warning with exit 0, so any
output at all fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parents[3] / "etc" / "systemd"
UNITS = sorted(UNITS_DIR.glob("*.service"))
VENV_BIN = Path(sys.executable).parent


def test_units_are_shipped():
    assert {unit.name for unit in UNITS} >= {"glance-sync-agent.service", "glance-sync-coordinator.service"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_unit_verifies_clean(unit: Path, tmp_path: Path):
    text = unit.read_text()
    assert "/usr/bin/glance-sync-" in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/usr/bin/", f"{VENV_BIN}/"))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output
