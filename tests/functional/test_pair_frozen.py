"""A coordinator pair whose active one is frozen (SIGSTOP) in the middle of a journal transaction.

Two real ``glance-sync-coordinator`` processes with ``[coordinator] pair = True`` share one
journal on the real PostgreSQL, then on the real MariaDB, of tests/harness/sqlserver.py.
The active one is stopped while one of its transactions is open: its session holds
the lease row (the fence's ``FOR UPDATE``) and the database sees a client that just
went quiet.  Without the session bounds of coordinator/journal/leader.py the passive
one's take would wait on that row for as long as the server keeps the connection,
hours.  With them the server ends the frozen session, and the passive one takes the
lease, never before the frozen one's lease expired, and binds its sockets.  Once
woken, the former active one commits nothing and stops acting: it exits with the
status of a lost lease, so the pair never has two active coordinators.

To freeze it mid-transaction, the test stops it, looks whether one of its sessions is
in a transaction with the lease row locked, and if not lets it run again and retries:
a condition, not a timing.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from coordinator.leadership import LOST_EXIT
from coordinator.schema import leader
from tests.functional import helpers
from tests.functional.test_coordinator_pair import LEASE, Pair
from tests.harness.procs import LOOPBACK, ServiceProcess, tcp_open
from tests.harness.sqlserver import SqlServer
from tests.harness.topology import Topology


@pytest.fixture(params=["postgresql", "mariadb"])
def frozen_url(request: pytest.FixtureRequest, sql_servers: dict[str, SqlServer]) -> str:
    return sql_servers[request.param].database(f"pair_frozen_{request.param}")


def test_a_frozen_active_coordinator_is_taken_over_and_fenced_when_it_wakes(
        topology: Topology, frozen_url: str, tmp_path: Path) -> None:
    topology.stop_services()
    with Pair(topology, frozen_url, tmp_path) as pair:
        topology.run_manage("db_sync", conf=pair.conf["a"])
        probe = sa.create_engine(frozen_url, poolclass=sa.pool.NullPool)
        try:
            _run(pair, probe)
        finally:
            probe.dispose()
            topology.stop_services()


def _run(pair: Pair, probe: sa.engine.Engine) -> None:
    a = pair.start("a")
    a.wait_ready(lambda: pair.bound("a") and pair.lease()[2] == 1, timeout=60)
    holder_a = pair.lease()[0]
    b = pair.start("b")
    b.wait_ready(lambda: "passive: the leader lease is held by" in b.log_tail(200), timeout=60)
    assert "journal sessions bounded for the pair" in a.log_tail(400)

    helpers.wait_until(lambda: _frozen_mid_transaction(a, probe), 300, "the active one frozen mid-transaction")
    expires_at_freeze = pair.lease()[1]
    try:
        # The passive one takes the lease: the server ended the frozen session and freed the row.
        helpers.wait_until(lambda: pair.lease()[2] == 2, 120, "the takeover from the frozen coordinator")
        holder_b, expires_b, _ = pair.lease()
        assert holder_b != holder_a and expires_b - LEASE >= expires_at_freeze  # never before a's lease ended
        b.wait_ready(lambda: pair.bound("b"), timeout=60)
        assert a.running  # still frozen: nothing but the database's bound made room
    finally:
        a.kill(signal.SIGCONT, group=False)

    # Woken, a finds its transaction gone and its lease lost: it stops acting and exits.
    assert a.wait(120) == LOST_EXIT
    assert "leader lease lost" in a.log_tail(400)
    assert pair.lease()[:1] == (holder_b,) and pair.lease()[2] == 2
    assert b.running and pair.bound("b") and not tcp_open(LOOPBACK, pair.ports["a"][1])
    coordinator = helpers.status(pair.topology, conf=pair.conf["b"])["coordinator"]
    assert coordinator["role"] == "active" and coordinator["lease"]["holder"] == holder_b


def _frozen_mid_transaction(proc: ServiceProcess, probe: sa.engine.Engine) -> bool:
    """Stop ``proc``; True (left stopped) when it holds the lease row in an open transaction, else it runs on."""
    assert proc.pid is not None and proc.running
    os.kill(proc.pid, signal.SIGSTOP)
    process = psutil.Process(proc.pid)
    helpers.wait_until(lambda: process.status() == psutil.STATUS_STOPPED, 30, "the SIGSTOP", interval=0.01)
    if _in_transaction(process, probe) and _row_locked(probe):
        return True
    os.kill(proc.pid, signal.SIGCONT)
    time.sleep(random.uniform(0.0, 0.1))  # land elsewhere in its loop next time
    return False


def _in_transaction(process: psutil.Process, probe: sa.engine.Engine) -> bool:
    """Whether one of ``process``'s sessions on the server has a transaction open."""
    port = probe.url.port
    ports = [c.laddr.port for c in process.net_connections(kind="tcp") if c.raddr and c.raddr.port == port]
    if not ports:
        return False
    with probe.connect() as conn:
        if conn.dialect.name == "postgresql":
            query = ("SELECT count(*) FROM pg_stat_activity WHERE xact_start IS NOT NULL "
                     f"AND client_port IN ({','.join(map(str, ports))})")
        else:
            query = ("SELECT count(*) FROM information_schema.innodb_trx t JOIN information_schema.processlist p "
                     "ON p.ID = t.trx_mysql_thread_id "
                     f"WHERE SUBSTRING_INDEX(p.HOST, ':', -1) IN ({','.join(map(str, ports))})")
        return conn.exec_driver_sql(query).scalar() > 0


def _row_locked(probe: sa.engine.Engine) -> bool:
    """Whether another session holds the lease row (a NOWAIT lock is refused)."""
    with probe.connect() as conn:
        try:
            conn.execute(sa.select(leader.c.name).with_for_update(nowait=True)).all()
        except sa.exc.DBAPIError:
            return True
        finally:
            conn.rollback()
    return False
