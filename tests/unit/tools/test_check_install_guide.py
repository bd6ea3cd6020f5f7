"""tools/check_install_guide.py: which blocks of the guide it runs, and what it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT_DIR = Path(__file__).resolve().parents[3]
CHECKER = ROOT_DIR / "tools" / "check_install_guide.py"
GUIDE = ROOT_DIR / "doc" / "install.md"

sys.path.insert(0, str(ROOT_DIR / "tools"))
import check_install_guide  # noqa: E402


def test_the_guide_checks_every_host_and_the_steps_that_matter():
    found = check_install_guide.blocks(GUIDE.read_text())
    assert {b.host for b in found} >= {"coordinator", "glance-api", "agent", "store"}
    text = "\n".join(b.text for b in found)
    for step in ("db_sync", "gensecret", "keygen", "--role agent", "glance-api.conf.d", "glancesync",
                 "systemd-analyze verify", "Match User glancesync", "glance_store.yaml"):
        assert step in text, step


def test_markers_name_the_host_and_a_needed_command():
    text = "<!-- check host=agent needs=sshd -->\n\n```sh\necho one\necho two\n```\n\n```sh\nnot marked\n```\n"
    (block,) = check_install_guide.blocks(text)
    assert (block.line, block.host, block.needs, block.text) == (3, "agent", "sshd", "echo one\necho two")


def test_a_guide_without_checked_blocks_is_refused(tmp_path):
    guide = tmp_path / "install.md"
    guide.write_text("# Install\n\n```sh\necho not marked\n```\n")
    result = subprocess.run([sys.executable, str(CHECKER), "--guide", str(guide)], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "no block is marked" in result.stderr


def test_a_marker_must_precede_a_shell_block():
    with pytest.raises(check_install_guide.GuideError, match="must be followed"):
        check_install_guide.blocks("<!-- check -->\nsome text\n")
    with pytest.raises(check_install_guide.GuideError, match="unknown marker"):
        check_install_guide.blocks("<!-- check hots=agent -->\n```sh\ntrue\n```\n")
