"""The outbox's textfile for node_exporter: what it counts, and that it is written whole."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from glance_proxy import spoolstats
from glance_proxy.spool import SharedUsage, Spool


def read(path: Path) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(path.read_text()) for s in f.samples}


def test_the_file_counts_every_workers_spool(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    usage = SharedUsage(root, 1 << 20)
    first, second = Spool.create(root, usage), Spool.create(root, usage)
    try:
        first.put(b"a" * 10)
        seq = first.put(b"b" * 20)
        second.put(b"c" * 30)
        oldest = first.pending()[0]
        os.utime(oldest, (1000.0, 1000.0))
        out = tmp_path / "glance_sync_sender.prom"
        spoolstats.write(str(out), root, now=1060.0)
        assert read(out) == {"glancesync_sender_spool_events": 3, "glancesync_sender_spool_bytes": 60,
                             "glancesync_sender_oldest_event_age_seconds": 60.0}
        first.remove(seq)
        spoolstats.write(str(out), root, now=1060.0)
        assert read(out)["glancesync_sender_spool_events"] == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["spool", out.name])  # no temporary left
    finally:
        first.close()
        second.close()
        usage.close()


def test_an_empty_or_missing_spool_dir_is_zero(tmp_path: Path) -> None:
    assert spoolstats.spool_depth(tmp_path / "absent", 5.0) == (0, 0, 0.0)


def test_the_writer_writes_at_most_every_interval_and_survives_a_bad_path(tmp_path: Path, caplog) -> None:
    out = tmp_path / "m.prom"
    writer = spoolstats.TextfileWriter(str(out), tmp_path)
    writer.maybe_write(0.0, 100.0)
    assert out.exists()
    out.unlink()
    writer.maybe_write(spoolstats.WRITE_SECONDS - 1, 100.0)
    assert not out.exists()
    writer.maybe_write(spoolstats.WRITE_SECONDS, 100.0)
    assert out.exists()
    bad = spoolstats.TextfileWriter(str(tmp_path / "no-such-dir" / "m.prom"), tmp_path)
    bad.maybe_write(0.0, 100.0)
    bad.maybe_write(spoolstats.WRITE_SECONDS, 100.0)
    assert caplog.text.count("cannot write the outbox metrics") == 1
