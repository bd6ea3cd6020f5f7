"""The fault campaign's own logic, without a topology: kind order, sizes, figures, the disk filler."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.harness import campaign
from tests.harness.campaign import CATEGORIES, Problem, Trial, Upload, image_sizes, ok, percentile, summarize
from tests.harness.faults import INJECTORS, Injected, fill_disk


def fake_campaign(kinds: list[str], seed: int = 3) -> campaign.Campaign:
    obj = campaign.Campaign.__new__(campaign.Campaign)
    obj.kinds, obj.seed = kinds, seed
    return obj


def test_every_kind_comes_once_before_any_comes_again() -> None:
    runner = fake_campaign(list(INJECTORS))
    n = len(INJECTORS)
    first, second = [runner.kind_of(i) for i in range(n)], [runner.kind_of(i) for i in range(n, 2 * n)]
    assert sorted(first) == sorted(INJECTORS) == sorted(second)
    assert [runner.kind_of(i) for i in range(n)] == first  # the seed decides, not the call order


def test_another_seed_gives_another_order() -> None:
    orders = {tuple(fake_campaign(list(INJECTORS), seed).kind_of(i) for i in range(5)) for seed in range(6)}
    assert len(orders) > 1


def test_sizes_stay_within_bounds_and_mix_small_and_large() -> None:
    sizes = image_sizes(random.Random(1), 400, 4096, 40 * 1024 * 1024)
    assert min(sizes) >= 4096 and max(sizes) <= 40 * 1024 * 1024
    assert sum(s < 1024 * 1024 for s in sizes) > 100 and sum(s > 10 * 1024 * 1024 for s in sizes) > 20


def test_percentile() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


def trial(kind: str, problems: list[Problem], converge: float | None, missed: bool = False) -> Trial:
    fault = Injected(kind, "RegionA", "detail", missed=missed)
    return Trial(0, fault, [Upload("id", 1, "x")], [], converge, problems, 1.0, offline=2)


def test_summary_counts_each_category_and_fails_on_any() -> None:
    trials = [
        trial("kill_agent", [], 10.0),
        trial("kill_agent", [Problem("failed", "i", "RegionB", "failed: boom")], 30.0),
        trial("kill_worker", [Problem("corrupt", "i", "RegionA", "differs (registered; ...)")], None, missed=True),
    ]
    summary = summarize(trials)
    assert summary["faults"] == {"kill_agent": {"injected": 2, "missed": 0},
                                 "kill_worker": {"injected": 0, "missed": 1}}
    assert (summary["failed"], summary["corrupt"], summary["corrupt_registered"]) == (1, 1, 1)
    assert summary["failed_regions"] == ["RegionB"] and summary["offline"] == 6
    assert (summary["converge_p50"], summary["converge_max"]) == (10.0, 30.0)
    assert not ok(summary)
    assert ok(summarize(trials[:1]))
    assert set(CATEGORIES) <= set(summary)
    assert "kill_worker 0 (+1 missed)" in campaign.render(summary)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_fill_disk_fills_the_filesystem(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        written = fill_disk(mount / "filler")
        assert written >= 2 * 1024 * 1024 - 8192
        with pytest.raises(OSError):
            (mount / "more").write_bytes(b"x" * 8192)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_registering_reads_the_journal(tmp_path: Path) -> None:
    import sqlite3

    from tests.harness.faults import Site

    journal = tmp_path / "journal.sqlite"
    with sqlite3.connect(journal) as conn:
        conn.execute("CREATE TABLE tasks (image_id TEXT, region TEXT, state TEXT)")
        conn.executemany("INSERT INTO tasks VALUES (?, ?, ?)",
                         [("a", "RegionA", "registering"), ("b", "RegionB", "registering"), ("a", "RegionB", "pending")])
    site = Site.__new__(Site)
    site.topo = SimpleNamespace(journal_path=journal)
    assert site.registering({"a"}) == [("a", "RegionA")]
    assert site.registering(set()) == []
