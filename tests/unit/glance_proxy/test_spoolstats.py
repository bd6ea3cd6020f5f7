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


def test_a_sender_with_a_textfile_writes_its_outbox_depth(tmp_path: Path) -> None:
    """No coordinator answers: the spooled event shows in the file the sender's own thread writes."""
    from glance_proxy.sender import EventSender
    from glancesync import config
    from glancesync.liveness import Backoff

    out = tmp_path / "glance_sync_sender.prom"
    path = tmp_path / "proxy.conf"
    path.write_text(f"[DEFAULT]\nsync_server_port = 1\n[proxy]\nspool_dir = {tmp_path / 'spool'}\n"
                    f"metrics_textfile = {out}\n")
    conf = config.load(["--config-file", str(path)], "test-proxy", setup_logging=False)
    clock = [0.0]
    sender = EventSender(conf, ack_timeout=0.05, backoff=Backoff(initial=60.0, maximum=60.0),
                         clock=lambda: clock[0])
    sender._retry_at = float("inf")  # nothing listens: never try to send, only spool
    try:
        sender.submit({"event_id": "e1", "kind": "updated", "image_id": "00000000-0000-4000-8000-000000000001"})
        sender.step()  # spools the event; the first write of the file came before it
        assert read(out)["glancesync_sender_spool_events"] == 0
        clock[0] += spoolstats.WRITE_SECONDS
        sender.step()
        assert read(out)["glancesync_sender_spool_events"] == 1
    finally:
        sender.close()
