"""The demo's run directories: a rerun keeps earlier runs, latest names the newest, old ones pruned."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from tests.harness.rundirs import LATEST, new_run_dir, runs

T0 = datetime(2026, 11, 30, 19, 5, 7, tzinfo=UTC)


def test_each_run_gets_its_own_directory_and_latest_follows(tmp_path):
    base = tmp_path / "demo-run"
    first = new_run_dir(base, T0)
    assert first == base / "20261130T190507Z" and first.is_dir()
    (first / "logs").mkdir()
    (first / "logs" / "coordinator.log").write_text("first run\n")
    second = new_run_dir(base, T0 + timedelta(minutes=3))
    assert second.name == "20261130T190807Z"
    # The rerun kept the first run's logs.
    assert (first / "logs" / "coordinator.log").read_text() == "first run\n"
    latest = base / LATEST
    assert latest.is_symlink() and os.readlink(latest) == second.name  # relative: the tree can move
    assert latest.resolve() == second.resolve()


def test_two_runs_in_one_second_do_not_share_a_directory(tmp_path):
    one = new_run_dir(tmp_path, T0)
    two = new_run_dir(tmp_path, T0)
    three = new_run_dir(tmp_path, T0)
    assert [one.name, two.name, three.name] == ["20261130T190507Z", "20261130T190507Z-1", "20261130T190507Z-2"]
    assert runs(tmp_path) == [one, two, three]
    assert (tmp_path / LATEST).resolve() == three.resolve()


def test_only_the_oldest_runs_beyond_keep_are_removed_and_other_entries_stay(tmp_path):
    (tmp_path / "etc").mkdir()  # the single-directory layout of earlier versions
    (tmp_path / "openrc").write_text("export OS_AUTH_URL=...\n")
    made = [new_run_dir(tmp_path, T0 + timedelta(seconds=i), keep=3) for i in range(5)]
    assert runs(tmp_path) == made[2:]
    assert not made[0].exists() and not made[1].exists()
    assert (tmp_path / "etc").is_dir() and (tmp_path / "openrc").exists()
    assert (tmp_path / LATEST).resolve() == made[-1].resolve()


def test_keep_zero_keeps_every_run(tmp_path):
    made = [new_run_dir(tmp_path, T0 + timedelta(hours=i), keep=0) for i in range(7)]
    assert runs(tmp_path) == made


def test_a_real_latest_directory_is_never_replaced(tmp_path):
    (tmp_path / LATEST).mkdir()
    (tmp_path / LATEST / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a symlink"):
        new_run_dir(tmp_path, T0)
    assert (tmp_path / LATEST / "keep.txt").read_text() == "mine"
