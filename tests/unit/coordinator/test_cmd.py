"""glance-sync-coordinator's main(), step by step: options, journal, metrics before the check, run."""

from __future__ import annotations

import gc
import logging
import threading

import pytest

from coordinator import cmd
from coordinator.journal import LeaseLost
from coordinator.leadership import LOST_EXIT
from glancesync.exceptions import JournalError

from .conftest import REGIONS, make_conf
from .test_metrics import scrape, value


def test_sound_options_pass_and_the_strategy_in_force_is_logged(tmp_path, db_url, store_yaml, stores, caplog):
    conf = make_conf(tmp_path, db_url, store_yaml, DEFAULT={"snapshot_region_names": REGIONS[0]})
    with caplog.at_level(logging.INFO, logger="coordinator.cmd"):
        cmd.check_options(conf, stores)
    assert "sync_strategy in force: ALL" in caplog.text


@pytest.mark.parametrize("sections, words", [
    ({"DEFAULT": {"sync_strategy": "USER", "sync_user_rules": "p1:Mars"}}, "'Mars' is not known"),
    ({"DEFAULT": {"snapshot_region_names": "Mars"}}, "snapshot_region_names: "),
    ({"coordinator": {"pair": True, "leader_lease_time": 10, "leader_renew_interval": 6}},
     "leader_renew_interval (6) must be at most half of leader_lease_time (10)"),
])
def test_a_bad_option_is_one_line_and_exit_2(tmp_path, db_url, store_yaml, stores, capsys, monkeypatch,
                                             sections, words):
    conf = make_conf(tmp_path, db_url, store_yaml, **sections)
    # The log's handlers are the service's (set up by main); an earlier test's may write to a closed stream.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    with pytest.raises(SystemExit) as info:
        cmd.check_options(conf, stores)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("glance-sync-coordinator: configuration error: ") and words in err, err


def test_a_current_journal_is_ready(conf):
    assert cmd.journal_ready(conf)


def test_an_unsynced_journal_is_not_ready_and_says_what_to_run(tmp_path, store_yaml, caplog):
    conf = make_conf(tmp_path, f"sqlite:///{tmp_path / 'fresh.sqlite'}", store_yaml)
    assert not cmd.journal_ready(conf)
    assert "run 'glance-sync-manage db_sync'" in caplog.text


def test_an_unreachable_journal_is_named_by_its_error_type_only(tmp_path, store_yaml, monkeypatch, caplog):
    conf = make_conf(tmp_path, "postgresql://sync:s3cret-pw@127.0.0.1:1/journal", store_yaml)

    def unreachable(url, _options):
        raise ConnectionRefusedError(f"cannot reach {url}")

    monkeypatch.setattr(cmd.manage, "schema_revisions", unreachable)
    assert not cmd.journal_ready(conf)
    assert "journal not readable: ConnectionRefusedError" in caplog.text
    assert "s3cret-pw" not in caplog.text  # the URL (and its password) stays out of the log


def test_until_the_loop_runs_the_metrics_say_the_credentials_are_checked(conf):
    stats = cmd.coordinator_metrics(conf, "http://cascading")
    assert stats.health.check() == (
        False, "not ready: checking that the cascading credentials are admin in http://cascading")
    assert value(scrape(stats), "glancesync_coordinator_leader") == 0.0


class FakeLeadership:
    def __init__(self, lost: str | None) -> None:
        self.lost = lost
        self.held = lost is None


class FakeJournal:
    closed = False
    fence_broken: str | None = None
    taken_by: str | None = None  # another holder of the lease: the fence check says so

    def close(self) -> None:
        self.closed = True

    def leader_row(self) -> tuple[str | None, float, int]:
        if self.taken_by is not None:
            self.fence_broken = f"held by {self.taken_by}, not by us"
            raise LeaseLost(detail=self.fence_broken)
        return ("us", 0.0, 1)


class FakeService:
    def __init__(self, leadership: FakeLeadership | None = None, error: Exception | None = None) -> None:
        self.leadership, self.error, self.journal = leadership, error, FakeJournal()

    def run(self, _stop: threading.Event) -> None:
        self.frozen = gc.get_freeze_count()
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("service, code", [
    (FakeService(), 0),
    (FakeService(FakeLeadership(None)), 0),
    (FakeService(FakeLeadership("another coordinator took it")), LOST_EXIT),
    (FakeService(error=JournalError(detail="OperationalError: database is locked")), 1),
])
def test_run_gives_the_exit_status_and_closes_the_journal(service, code, caplog):
    try:
        assert cmd.run(service, threading.Event()) == code
    finally:
        gc.unfreeze()
    assert service.journal.closed
    if code == LOST_EXIT:
        assert "leader lease lost (another coordinator took it)" in caplog.text
    if code == 1:
        assert "cannot start: " in caplog.text and "database is locked" in caplog.text


def test_a_journal_failure_after_the_lease_was_taken_elsewhere_exits_as_a_lost_lease(caplog):
    # A pair's coordinator frozen while it started wakes to a session the server ended.
    service = FakeService(FakeLeadership(None), error=JournalError(detail="server closed the connection"))
    service.journal.taken_by = "vm-other (generation 2)"
    try:
        assert cmd.run(service, threading.Event()) == LOST_EXIT
    finally:
        gc.unfreeze()
    assert "leader lease lost (held by vm-other (generation 2), not by us)" in caplog.text
    assert "cannot start" not in caplog.text


def test_a_journal_failure_with_the_lease_still_ours_is_a_failed_start(caplog):
    service = FakeService(FakeLeadership(None), error=JournalError(detail="server closed the connection"))
    try:
        assert cmd.run(service, threading.Event()) == 1
    finally:
        gc.unfreeze()
    assert "cannot start: " in caplog.text and "server closed the connection" in caplog.text


def test_the_start_up_objects_are_kept_out_of_the_collectors_passes_before_the_loop_runs():
    service = FakeService()
    try:
        assert cmd.run(service, threading.Event()) == 0
    finally:
        gc.unfreeze()  # the test process is no coordinator: its later objects must stay collectable
    assert service.frozen > 10000  # the modules imported so far, at least
