"""The local stack's MariaDB: found, or started privately, then migrated.

Order (DESIGN.md section 7): ``DATABASE_URL`` when set; else the machine's server on
127.0.0.1:3306 when it answers (root, empty password; the database named by
``settings.database.name`` is created if missing); else a private ``mariadbd`` under
``.sluice/mariadb`` on a free port when the binaries are installed; else one clear message
naming the Debian package. ``PrivateMariaDB`` is reusable on its own: the chaos suite stops
and restarts it mid-drain (same data directory, same port).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pymysql

from sluice.db import DbConfigError, DbCredentials
from sluice.migrations import MigrationSource
from sluice_tools.local.processes import LOOPBACK, ChildProcess, LocalServiceError, choose_port, wait_until

MACHINE_PORT = 3306
INSTALL_HINT = (
    "no MariaDB found: DATABASE_URL is not set, nothing answers on 127.0.0.1:3306 and `mariadbd` is not "
    "installed. Install the Debian package `mariadb-server` (sudo apt-get install mariadb-server), "
    "or set DATABASE_URL=mysql://user:password@host:port/database"
)


class DatabaseUnavailableError(LocalServiceError):
    """No MariaDB could be found or started."""


def _connect(db: DbCredentials, timeout: int = 2) -> pymysql.connections.Connection:
    return pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                           database=db.database or None, connect_timeout=timeout, autocommit=True)


def answers(db: DbCredentials) -> bool:
    try:
        _connect(db.with_database(""), timeout=1).close()
        return True
    except pymysql.MySQLError:
        return False


def ensure_database(db: DbCredentials) -> None:
    """Create ``db``'s database if it does not exist (utf8mb4)."""
    if not db.database:
        raise DatabaseUnavailableError("the database URL names no database")
    try:
        conn = _connect(db.with_database(""))
    except pymysql.MySQLError as exc:
        raise DatabaseUnavailableError(f"cannot connect to MariaDB at {db.host}:{db.port}: {exc}") from None
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db.database.replace('`', '``')}` CHARACTER SET utf8mb4")
    except pymysql.MySQLError as exc:
        raise DatabaseUnavailableError(
            f"cannot create database {db.database!r} on {db.host}:{db.port}: {exc}") from None
    finally:
        conn.close()


def migrate(url: str, tasks: Sequence[MigrationSource] = ()) -> None:
    from sluice.migrations import apply_migrations

    apply_migrations(url, tasks)


class PrivateMariaDB:
    """A ``mariadbd`` of our own: its data directory, socket and port, on 127.0.0.1 only.

    ``start()`` initialises the data directory the first time; ``stop()`` then ``start()``
    again restarts the same server on the same port with the same data (a DB restart).
    """

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base_dir = base_dir
        self.datadir = base_dir / "data"
        self.socket = base_dir / "mariadb.sock"
        self.log_path = base_dir / "mariadbd.log"
        self.requested_port = port
        self.port = 0
        self._child: ChildProcess | None = None

    @staticmethod
    def binaries() -> tuple[str, str] | None:
        server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin")
        install = shutil.which("mariadb-install-db") or shutil.which("mariadb-install-db",
                                                                     path="/usr/bin:/usr/local/bin")
        return (server, install) if server and install else None

    def admin_url(self) -> DbCredentials:
        return DbCredentials(host=LOOPBACK, port=self.port, user="root", password="", database="")

    def _initialise(self, install_db: str) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        argv = [install_db, "--no-defaults", f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db"]
        if os.geteuid() == 0:
            argv.append("--user=root")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)  # never leave a half-made data directory
            raise DatabaseUnavailableError(f"mariadb-install-db failed: {result.stderr.strip()[-500:]}")

    def start(self, timeout_s: float = 60.0) -> DbCredentials:
        found = self.binaries()
        if found is None:
            raise DatabaseUnavailableError(INSTALL_HINT)
        server, install_db = found
        if not (self.datadir / "mysql").is_dir():
            self._initialise(install_db)
        # Keep the port across restarts so URLs handed out stay valid.
        self.port = choose_port(self.port or self.requested_port, "the private MariaDB")
        argv = [server, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--port={self.port}", f"--bind-address={LOOPBACK}",
                f"--pid-file={self.base_dir / 'mariadbd.pid'}",
                "--skip-name-resolve", "--innodb-buffer-pool-size=64M", "--max-connections=200"]
        if os.geteuid() == 0:
            argv.append("--user=root")
        child = ChildProcess("mariadbd", argv, log_path=self.log_path)
        self._child = child
        try:
            wait_until(lambda: answers(self.admin_url()), timeout_s,
                       f"the private MariaDB on port {self.port}", child.alive, poll_s=0.1)
        except LocalServiceError as exc:
            failure = child.failure(str(exc))
            self.stop()
            raise DatabaseUnavailableError(str(failure)) from None
        return self.admin_url()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def alive(self) -> bool:
        return self._child is not None and self._child.alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        """A clean shutdown (SIGTERM lets InnoDB flush); SIGKILL only if it hangs."""
        if self._child is not None:
            self._child.stop(timeout_s)
            self._child = None

    def kill(self) -> None:
        """SIGKILL now, like a crash (the chaos suite's DB fault); start() recovers the same data."""
        if self._child is not None:
            self._child.stop(timeout_s=0.0)
            self._child = None


@dataclass
class LocalDatabase:
    """The database the stack uses; ``private`` is set when the stack started its own server."""

    url: str
    source: str  # "DATABASE_URL" | "127.0.0.1:3306" | "private mariadbd"
    private: PrivateMariaDB | None = None

    def stop(self) -> None:
        if self.private is not None:
            self.private.stop()


def find_database(database_name: str, private_dir: Path, *, database_url: str | None = None,
                  run_migrations: bool = True, tasks: Sequence[MigrationSource] = ()) -> LocalDatabase:
    """Find or start MariaDB, make sure the database exists, apply the framework's migrations
    and those of the task modules ``tasks``."""
    explicit = database_url if database_url is not None else os.environ.get("DATABASE_URL", "")
    if explicit:
        try:
            url = DbCredentials.from_url(explicit)
        except DbConfigError as exc:
            # `sluice local up`, the demo and the chaos runner report a LocalServiceError in one line.
            raise DatabaseUnavailableError(str(exc)) from None
        if not url.database:
            url = url.with_database(database_name)
        found = LocalDatabase(url.url(), "DATABASE_URL")
    else:
        machine = DbCredentials(host=LOOPBACK, port=MACHINE_PORT, user="root", password="", database=database_name)
        if answers(machine):
            found = LocalDatabase(machine.url(), f"{LOOPBACK}:{MACHINE_PORT}")
        else:
            private = PrivateMariaDB(private_dir)
            url = private.start().with_database(database_name)
            found = LocalDatabase(url.url(), "private mariadbd", private)
    try:
        ensure_database(DbCredentials.from_url(found.url))
        if run_migrations:
            migrate(found.url, tasks)
    except BaseException:
        found.stop()
        raise
    return found
