"""doc/install.md's commands run in a temporary root (tools/check_install_guide.py), and a broken one fails.

No service is started, but each run executes every checked command of the guide
(db_sync, keygen, systemd-analyze verify, sshd -t ...): tens of seconds, so here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT_DIR = Path(__file__).resolve().parents[2]
CHECKER = ROOT_DIR / "tools" / "check_install_guide.py"
GUIDE = ROOT_DIR / "doc" / "install.md"

# The guide sets owners (root:glance-sync ...): only root can run it, as on a real host.
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the install guide's commands set file owners: root only")


def run_checker(guide: Path = GUIDE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), "--guide", str(guide)], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)


def broken_guide(tmp_path: Path, old: str, new: str) -> Path:
    text = GUIDE.read_text()
    assert text.count(old) == 1, old
    path = tmp_path / "install.md"
    path.write_text(text.replace(old, new))
    return path


def line_of(text: str, needle: str) -> int:
    """Line of the opening fence of the checked block holding ``needle``."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if needle in line)
    return max(i for i in range(at) if lines[i].startswith("```")) + 1


@as_root
def test_the_guide_runs_clean_in_a_temporary_root():
    result = run_checker()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ran in a temporary root" in result.stdout


@as_root
def test_a_command_that_breaks_fails_the_check_and_names_its_block(tmp_path):
    guide = broken_guide(tmp_path, '.conf" db_sync\n', '.conf" db_synk\n')
    result = run_checker(guide)
    assert result.returncode == 1
    assert f"block at line {line_of(guide.read_text(), 'db_synk')}" in result.stderr


@as_root
def test_a_file_the_guide_leaves_readable_fails_the_check(tmp_path):
    guide = broken_guide(tmp_path, 'install -m 0600 -o "$SYNC_USER" -g "$SYNC_GROUP" "$STAGE/internal.secret"',
                         'install -m 0644 -o "$SYNC_USER" -g "$SYNC_GROUP" "$STAGE/internal.secret"')
    result = run_checker(guide)
    assert result.returncode == 1
    assert "coordinator/etc/glance-sync/internal.secret: mode 0o644, expected 0o600" in result.stderr
