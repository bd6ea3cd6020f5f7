"""Real PostgreSQL and MariaDB servers for the journal's tests, each in a temporary directory.

:class:`PostgresServer` runs Debian's ``initdb`` and ``postgres``; :class:`MariaDBServer`
runs ``mariadb-install-db`` and ``mariadbd``.  Both listen on 127.0.0.1 on a free port,
keep their data in a fresh directory, and run without fsync: they hold test data only,
and a test session pays seconds, not minutes, to start them.  Started as root, each
runs as its Debian system user (``postgres``, ``mysql``), which refuse to run as root.
:func:`start_servers` starts several in parallel.

A test gets a database of its own with :meth:`SqlServer.database`: an empty one, or
(``migrated=True``) a copy of a template database that ``db_sync`` migrated once per
server, which costs a CREATE DATABASE instead of a whole migration run; one that
:meth:`SqlServer.release` reset after its test (the migrations' rows, such as the leader
lease's, as they made them; every other row deleted) is reused before any copy is made.

``tools/bootstrap.sh`` installs both servers from Debian; :func:`missing` names what
is not installed.  No pytest imports here.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

from tests.harness.procs import LOOPBACK, ServiceError, ServiceProcess, free_port

TEMPLATE = "journal_template"


def _postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _mariadb_bin(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)


def missing() -> list[str]:
    """The server programs that are not installed (apt-get install postgresql mariadb-server)."""
    wanted = {"initdb": _postgres_bin("initdb"), "postgres": _postgres_bin("postgres"),
              "mariadb-install-db": _mariadb_bin("mariadb-install-db"), "mariadbd": _mariadb_bin("mariadbd")}
    return [name for name, path in wanted.items() if path is None]


class SqlServer:
    """One database server: ``start()``, ``database(name)`` for a URL, ``stop()``."""

    kind = ""
    system_user = ""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.port = free_port()
        self.process: ServiceProcess | None = None
        self.data_root: Path | None = None
        self._template_ready = False
        self._released: list[str] = []
        # The rows the migrations made in the template (the leader lease's row): every
        # released database gets them back, so it is as a fresh copy of the template.
        self._seed: dict[str, list[dict]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 127.0.0.1:{self.port}>"

    @property
    def run_as(self) -> str | None:
        """The system user the server runs as (root only), or None for ourselves."""
        return self.system_user if os.geteuid() == 0 else None

    def _make_root(self) -> Path:
        # Outside pytest's base directory: that one is 0700 root, which the system user cannot enter.
        root = Path(tempfile.mkdtemp(prefix=f"glancesync-{self.kind}-"))
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        return root

    def _as_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as and self.kind == "postgresql" else argv

    def start(self, timeout: float = 120.0) -> SqlServer:
        self.data_root = self._make_root()
        init = ServiceProcess(f"{self.kind}-init", self._as_user(self.init_argv()), self.log_dir / f"{self.kind}-init.log")
        init.start()
        if init.wait(timeout) != 0:
            raise init.failure("could not create its data directory")
        self.process = ServiceProcess(self.kind, self._as_user(self.server_argv()), self.log_dir / f"{self.kind}.log",
                                      grace=15)
        self.process.start()
        self.process.wait_ready(self._answers, timeout, interval=0.1)
        return self

    def _answers(self) -> bool:
        engine = sa.create_engine(self.url(self.admin_db), poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Kill the server and remove its data: it held test data only, a clean shutdown (which
        flushes every buffer, half a minute for MariaDB on a busy machine) buys nothing."""
        if self.process is not None:
            self.process.kill(signal.SIGKILL)
            self.process.stop()
        if self.data_root is not None:
            shutil.rmtree(self.data_root, ignore_errors=True)
            self.data_root = None

    def admin(self, *statements: str) -> None:
        """Run statements outside a transaction on the admin database (CREATE DATABASE must)."""
        engine = sa.create_engine(self.url(self.admin_db), poolclass=sa.pool.NullPool,
                                  isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for statement in statements:
                    conn.exec_driver_sql(statement)
        finally:
            engine.dispose()

    def database(self, name: str, *, migrated: bool = False, migrate: Callable[[str], None] | None = None) -> str:
        """The URL of a database of one's own: a new empty one ``name``, or (``migrated``) one at the
        newest schema with no rows: given back by :meth:`release`, else a copy of the template.

        ``migrate(url)`` migrates the template the first time (coordinator.manage.db_sync).
        """
        if not migrated:
            self.admin(self.create_sql(name))
            return self.url(name)
        with self._lock:
            if self._released:
                return self._released.pop()
            if not self._template_ready:
                if migrate is None:
                    raise ValueError("the first migrated database needs migrate=")
                self.admin(self.create_sql(TEMPLATE))
                migrate(self.url(TEMPLATE))
                self._seed = _rows(self.url(TEMPLATE))
                self._template_ready = True
            self.copy_template(name)
        return self.url(name)

    def release(self, url: str) -> None:
        """Give back a migrated database once its test is over: it goes back to what the migrations
        made (their rows, such as the leader lease's, reset; every other row deleted; the schema
        revision kept), and the next :meth:`database` takes it, cheaper than a copy (MariaDB's is 1 s)."""
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                metadata = sa.MetaData()
                metadata.reflect(conn)
                for name, table in metadata.tables.items():
                    if name != "alembic_version":
                        conn.execute(table.delete())
                        if self._seed.get(name):
                            conn.execute(table.insert(), self._seed[name])
        finally:
            engine.dispose()
        with self._lock:
            self._released.append(url)

    # Per server kind.
    admin_db = ""

    def init_argv(self) -> list[str]:
        raise NotImplementedError

    def server_argv(self) -> list[str]:
        raise NotImplementedError

    def url(self, database: str) -> str:
        raise NotImplementedError

    def create_sql(self, name: str) -> str:
        return f"CREATE DATABASE {name}"

    def copy_template(self, name: str) -> None:
        raise NotImplementedError


def _rows(url: str) -> dict[str, list[dict]]:
    """Every row of every table but ``alembic_version``, by table."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            metadata = sa.MetaData()
            metadata.reflect(conn)
            return {name: [dict(row._mapping) for row in conn.execute(sa.select(table))]
                    for name, table in metadata.tables.items() if name != "alembic_version"}
    finally:
        engine.dispose()


class PostgresServer(SqlServer):
    kind = "postgresql"
    system_user = "postgres"
    admin_db = "postgres"

    def init_argv(self) -> list[str]:
        assert self.data_root is not None
        return [str(_postgres_bin("initdb")), "-D", str(self.data_root / "data"), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync"]

    def server_argv(self) -> list[str]:
        assert self.data_root is not None
        settings = {"listen_addresses": LOOPBACK, "unix_socket_directories": str(self.data_root),
                    "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                    "max_connections": "200", "shared_buffers": "32MB"}
        argv = [str(_postgres_bin("postgres")), "-D", str(self.data_root / "data"), "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@{LOOPBACK}:{self.port}/{database}"

    def copy_template(self, name: str) -> None:
        # FILE_COPY copies the template's files (a checkpoint, cheap without fsync);
        # the default WAL_LOG writes every block into the WAL.
        self.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY")


class MariaDBServer(SqlServer):
    kind = "mariadb"
    system_user = "mysql"
    admin_db = "mysql"

    def _user_args(self) -> list[str]:
        return [f"--user={self.run_as}"] if self.run_as else []

    def init_argv(self) -> list[str]:
        assert self.data_root is not None
        return [str(_mariadb_bin("mariadb-install-db")), "--no-defaults", f"--datadir={self.data_root / 'data'}",
                *self._user_args(), "--auth-root-authentication-method=normal", "--skip-test-db",
                "--skip-name-resolve"]

    def server_argv(self) -> list[str]:
        assert self.data_root is not None
        return [str(_mariadb_bin("mariadbd")), "--no-defaults", f"--datadir={self.data_root / 'data'}",
                *self._user_args(), f"--port={self.port}", f"--bind-address={LOOPBACK}",
                f"--socket={self.data_root / 'mariadb.sock'}", f"--pid-file={self.data_root / 'mariadb.pid'}",
                "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--innodb-flush-method=nosync",
                # Debian's own server defaults: utf8mb4 with a case-insensitive collation.
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci"]

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root@{LOOPBACK}:{self.port}/{database}?charset=utf8mb4"

    def copy_template(self, name: str) -> None:
        # No template databases in MariaDB: the same tables (CREATE TABLE ... LIKE keeps
        # columns, indexes and options) and the rows of the migrated template (its revision).
        engine = sa.create_engine(self.url(TEMPLATE), poolclass=sa.pool.NullPool)
        try:
            tables = sa.inspect(engine).get_table_names()
        finally:
            engine.dispose()
        statements = [self.create_sql(name)]
        for table in tables:
            statements += [f"CREATE TABLE {name}.{table} LIKE {TEMPLATE}.{table}",
                           f"INSERT INTO {name}.{table} SELECT * FROM {TEMPLATE}.{table}"]
        self.admin(*statements)


SERVERS: dict[str, type[SqlServer]] = {"postgresql": PostgresServer, "mariadb": MariaDBServer}


def start_servers(log_dir: Path, kinds: Iterable[str] = tuple(SERVERS), timeout: float = 120.0) -> dict[str, SqlServer]:
    """Start one server of each kind in parallel; all started, or none left running."""
    servers = {kind: SERVERS[kind](log_dir) for kind in kinds}
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = [pool.submit(server.start, timeout) for server in servers.values()]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        for server in servers.values():
            server.stop()
        raise ServiceError("database servers failed to start:\n" + "\n\n".join(str(e) for e in failed)) from failed[0]
    return servers
