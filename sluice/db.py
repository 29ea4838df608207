"""The framework's SQL (the processed-message ledger), the generic transaction a task
receives, and the one database connection a process holds.

Credentials come from ``DATABASE_URL`` (``mysql://user:pass@host:port/db``) or from a
Secrets Manager secret in the RDS JSON shape (username, password, host, port, dbname),
fetched through Powertools parameters with caching. A process keeps ONE connection and
reuses it across invocations, so a worker never holds more than one: the number of busy
workers bounds the number of database connections. Connections carry the connect
attribute ``program_name`` (``sluice-worker`` for workers) so they can be told apart.

Errors are classified: ``TransientDbError`` means "the database could not do it now"
(unreachable, connection lost, lock wait timeout, deadlock, schema not migrated yet) and
the work should be retried later; any other ``DbError`` means the statement itself was
refused and retrying the same item cannot help.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pymysql
import pymysql.cursors

LEDGER_TABLE = "processed_messages"
WORKER_PROGRAM = "sluice-worker"
DEFAULT_PORT = 3306

# Server error codes that say "not now" rather than "never": retry the item later.
TRANSIENT_CODES: frozenset[int] = frozenset({
    1040,  # too many connections
    1045,  # access denied: the secret may just have been rotated (it is re-read)
    1049,  # unknown database: not created / migrated yet
    1053,  # server shutdown in progress
    1146,  # table does not exist: migrations not applied yet
    1205,  # lock wait timeout
    1213,  # deadlock
    1927,  # connection killed
    2002, 2003,  # can't connect
    2006,  # server has gone away
    2013,  # lost connection during query (also read timeouts)
    2014, 2055,  # commands out of sync / lost connection at a given state
})
DUPLICATE_KEY = 1062


class DbError(Exception):
    """A database operation failed; retrying the same statement will fail again."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # the server's or driver's error number, when there is one


class TransientDbError(DbError):
    """The database could not do it now (down, timeout, deadlock, ...); retry later."""


class DbUnavailableError(TransientDbError):
    """No connection could be made (server down, unreachable, refusing, or credentials unreadable)."""


class DbConfigError(DbError):
    """The database URL or secret is malformed."""


def error_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def classify(exc: BaseException) -> DbError:
    """Turn a driver or socket error into TransientDbError or DbError, keeping the server's words."""
    if isinstance(exc, DbError):
        return exc
    code = error_code(exc)
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, pymysql.err.InterfaceError | OSError | TimeoutError) or code in TRANSIENT_CODES:
        return TransientDbError(detail, code)
    return DbError(detail, code)


@dataclass(frozen=True)
class DbCredentials:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def from_url(cls, url: str) -> DbCredentials:
        """Parse ``mysql://user:pass@host:port/db`` (db may be empty for an admin connection).

        Every malformed URL is one DbConfigError naming the problem and showing the URL with
        its password masked, never a ValueError from the parser.
        """
        shape = f"database URL {cls.redact_url(url)!r} is not mysql://user:password@host:port/database"
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise DbConfigError(f"{shape}: it is malformed: {exc}") from None
        if parts.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
            raise DbConfigError(f"{shape}: it must start with mysql:// (got scheme {parts.scheme!r})")
        if not parts.hostname:
            raise DbConfigError(f"{shape}: it has no host")
        try:
            port = parts.port  # urlsplit checks the port only when asked for it
        except ValueError:
            raise DbConfigError(f"{shape}: it is malformed: the port is not a number from 1 to 65535") from None
        database = unquote(parts.path.lstrip("/"))
        if "/" in database:
            raise DbConfigError(f"{shape}: the path {parts.path!r} must be a single database name")
        if database and not cls._plain_name(database):
            # The name goes into CREATE DATABASE `...`; anything else is refused, not quoted around.
            raise DbConfigError(
                f"{shape}: the database name {database!r} may hold only letters, digits, _ and $ (at most 64)")
        return cls(
            host=parts.hostname,
            port=port or DEFAULT_PORT,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
        )

    @staticmethod
    def _plain_name(name: str) -> bool:
        return len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_$") for c in name)

    @staticmethod
    def redact_url(url: str) -> str:
        """``url`` with its password masked, for messages; works on URLs the parser refuses too."""
        scheme, slashes, rest = url.partition("//")
        userinfo, at, location = rest.rpartition("@")
        if not slashes or not at or ":" not in userinfo:
            return url
        return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{location}"

    @classmethod
    def from_secret(cls, secret: Any, default_database: str = "") -> DbCredentials:
        """Read an RDS-shaped secret: {"username", "password", "host", "port", "dbname"}."""
        if not isinstance(secret, dict):
            raise DbConfigError("database secret is not a JSON object")
        missing = [k for k in ("username", "host") if not secret.get(k)]
        if not isinstance(secret.get("password"), str):
            missing.append("password")  # present but empty is allowed: a local server without one
        if missing:
            raise DbConfigError(f"database secret lacks {', '.join(missing)}")
        try:
            port = int(secret.get("port") or DEFAULT_PORT)
        except (TypeError, ValueError):
            raise DbConfigError(f"database secret port {secret.get('port')!r} is not a number") from None
        return cls(host=str(secret["host"]), port=port, user=str(secret["username"]),
                   password=str(secret["password"]), database=str(secret.get("dbname") or default_database))

    def url(self) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"mysql://{auth}@{self.host}:{self.port}/{quote(self.database, safe='')}"

    def redacted(self) -> str:
        """Where it points, without the password: for messages and logs."""
        return f"{self.user}@{self.host}:{self.port}/{self.database}"

    def with_database(self, database: str) -> DbCredentials:
        """The same server and login, another database ("" for an admin connection)."""
        return DbCredentials(host=self.host, port=self.port, user=self.user, password=self.password,
                             database=database)

    def client_env(self) -> dict[str, str]:
        """What the mysql/mariadb command-line client reads from its environment (no user: ``-u``)."""
        env = {"MYSQL_HOST": self.host, "MYSQL_TCP_PORT": str(self.port)}
        if self.password:
            env["MYSQL_PWD"] = self.password
        return env


def open_connection(creds: DbCredentials, *, connect_timeout: float = 3, read_timeout: float = 10,
                    program: str = "sluice", database: bool = True, autocommit: bool = False
                    ) -> pymysql.connections.Connection:
    """One pymysql connection with short timeouts; errors come out classified."""
    try:
        return pymysql.connect(
            host=creds.host, port=creds.port, user=creds.user, password=creds.password,
            database=creds.database if database and creds.database else None,
            connect_timeout=connect_timeout, read_timeout=read_timeout, write_timeout=read_timeout,
            autocommit=autocommit, charset="utf8mb4", program_name=program,
            # A row lock held by a stuck peer must not eat the whole Lambda budget.
            init_command=f"SET SESSION innodb_lock_wait_timeout = {max(1, int(read_timeout // 2))}",
        )
    except (pymysql.MySQLError, OSError) as exc:
        raise classify(exc) from exc


def connect_admin(url: str) -> pymysql.connections.Connection:
    """A connection with no database selected (autocommit), to create or drop databases."""
    creds = DbCredentials.from_url(url)
    return open_connection(creds, database=False, autocommit=True, program="sluice-admin")


def ensure_database(creds: DbCredentials) -> bool:
    """Create the database if it does not exist yet. Returns True when it was created."""
    try:
        open_connection(creds).close()
        return False
    except TransientDbError as exc:
        if exc.code != 1049:
            raise
    admin = open_connection(creds, database=False, autocommit=True, program="sluice-admin")
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{creds.database.replace('`', '``')}` "
                        "CHARACTER SET utf8mb4")
    except pymysql.MySQLError as exc:
        raise classify(exc) from exc
    finally:
        admin.close()
    return True


class Transaction:
    """One database transaction, as a task sees it: the DB-API calls a task needs, on the
    same connection and transaction that writes the item's ledger row.

    Arguments are bound by the driver (``%s`` placeholders), never formatted into the SQL.
    Errors come out of ``Database.transaction`` classified (TransientDbError or DbError)."""

    def __init__(self, cursor: pymysql.cursors.Cursor) -> None:
        self._cur = cursor

    def execute(self, sql: str, args: Sequence[Any] | Mapping[str, Any] | None = None) -> int:
        """Run one statement; returns the number of rows it affected (MariaDB counts an
        ``INSERT ... ON DUPLICATE KEY UPDATE`` that updated as 2)."""
        return int(self._cur.execute(sql, args))

    def fetch_one(self, sql: str, args: Sequence[Any] | Mapping[str, Any] | None = None) -> tuple[Any, ...] | None:
        self._cur.execute(sql, args)
        row = self._cur.fetchone()
        return tuple(row) if row is not None else None

    def fetch_all(self, sql: str, args: Sequence[Any] | Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        self._cur.execute(sql, args)
        return [tuple(row) for row in self._cur.fetchall()]

    def scalar(self, sql: str, args: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        row = self.fetch_one(sql, args)
        return row[0] if row else None

    @property
    def rowcount(self) -> int:
        """Rows affected by the last statement."""
        return int(self._cur.rowcount)

    @property
    def lastrowid(self) -> int | None:
        """The AUTO_INCREMENT id the last INSERT generated."""
        return self._cur.lastrowid


def claim(tx: Transaction, *, dedup_id: str, task: str, item_key: str, message_id: str, group_id: str) -> bool:
    """Insert the ledger row for ``dedup_id``; False when it is already there (already applied).

    Inserting first (rather than SELECT then INSERT) makes the primary key the lock: a second
    worker holding the same message waits on the row, then sees the duplicate instead of
    applying the effect a second time.
    """
    try:
        tx.execute(
            f"INSERT INTO {LEDGER_TABLE} (dedup_id, task, item_key, message_id, group_id, processed_at) "
            "VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(3))",
            (dedup_id, task, item_key[:256], message_id[:128], group_id[:128]),
        )
    except pymysql.err.IntegrityError as exc:
        if error_code(exc) == DUPLICATE_KEY:
            return False
        raise
    return True


def starts_with(prefix: str) -> str:
    """A LIKE pattern matching strings that start with ``prefix`` taken literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Database:
    """Credentials plus the one reused connection of this process."""

    def __init__(self, *, url: str = "", secret_id: str = "", db_name: str = "",
                 program: str = WORKER_PROGRAM, connect_timeout: float = 3, read_timeout: float = 10,
                 secret_max_age_s: int = 300, revalidate_after_s: float = 5) -> None:
        if not url and not secret_id:
            raise DbConfigError("no database configured: set DATABASE_URL or SLUICE_DB_SECRET_ID")
        self._url = url
        self._secret_id = secret_id
        self._db_name = db_name
        self._program = program
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._secret_max_age_s = secret_max_age_s
        self._revalidate_after_s = revalidate_after_s
        self._refetch_secret = False
        self._conn: pymysql.connections.Connection | None = None
        self._last_used = 0.0
        if url:
            DbCredentials.from_url(url)  # a malformed URL fails now, not on the first message

    @classmethod
    def from_env(cls, database_url: str, secret_id: str, db_name: str, **options: Any) -> Database:
        return cls(url=database_url, secret_id=secret_id, db_name=db_name, **options)

    def credentials(self) -> DbCredentials:
        if self._url:
            return DbCredentials.from_url(self._url)
        from aws_lambda_powertools.utilities import parameters

        try:
            secret = parameters.get_secret(self._secret_id, transform="json", max_age=self._secret_max_age_s,
                                           force_fetch=self._refetch_secret)
        except parameters.exceptions.TransformParameterError as exc:
            raise DbConfigError(f"database secret {self._secret_id!r} is not JSON: {exc}") from None
        except parameters.exceptions.GetParameterError as exc:
            raise TransientDbError(f"cannot read database secret {self._secret_id!r}: {exc}") from None
        self._refetch_secret = False
        return DbCredentials.from_secret(secret, self._db_name)

    def connection(self) -> pymysql.connections.Connection:
        """The process's connection, revalidated when it sat idle (the server may have dropped it)."""
        now = time.monotonic()
        if self._conn is not None and now - self._last_used > self._revalidate_after_s:
            try:
                self._conn.ping()
            except (pymysql.MySQLError, OSError):
                self.close()
        if self._conn is None:
            try:
                self._conn = open_connection(self.credentials(), connect_timeout=self._connect_timeout,
                                             read_timeout=self._read_timeout, program=self._program)
            except DbConfigError as exc:
                # Not any item's fault: items wait (and finally dead-letter with this reason).
                raise DbUnavailableError(f"database credentials are unusable: {exc}") from exc
            except TransientDbError as exc:
                if exc.code == 1045:
                    self._refetch_secret = True  # rotated password: read the secret again next time
                raise DbUnavailableError(f"cannot connect to the database: {exc}", exc.code) from exc
        self._last_used = now
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(pymysql.MySQLError, OSError):  # already broken: dropping it is enough
                conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Commit when the block ends normally, roll back on any exception; DB errors come out classified."""
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                yield Transaction(cur)
            conn.commit()
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, pymysql.MySQLError | OSError):
                error = classify(exc)
                if isinstance(error, TransientDbError):
                    self.close()  # the session may be half-dead; start clean next time
                raise error from exc
            raise
        finally:
            self._last_used = time.monotonic()

    def _rollback(self, conn: pymysql.connections.Connection) -> None:
        try:
            conn.rollback()
        except (pymysql.MySQLError, OSError):
            self.close()

    # -- reads outside a work transaction: task modules' own queries, the demo, the CLI ----
    def read(self, sql: str, args: Sequence[Any] | Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Every row of one query, in a transaction of its own that ends at once, so the next
        read sees what was committed meanwhile."""
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                rows = [tuple(row) for row in cur.fetchall()]
            conn.commit()  # end the read snapshot
        except (pymysql.MySQLError, OSError) as exc:
            self._rollback(conn)
            raise classify(exc) from exc
        return rows

    def scalar(self, sql: str, args: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row of one query, or None."""
        rows = self.read(sql, args)
        return rows[0][0] if rows else None

    def count_processed(self, key_prefix: str = "") -> int:
        """Ledger rows of the items whose key starts with ``key_prefix`` (all by default)."""
        return int(self.scalar(f"SELECT COUNT(*) FROM {LEDGER_TABLE} WHERE item_key LIKE %s",
                               (starts_with(key_prefix),)))

    def is_processed(self, dedup_id: str) -> bool:
        return bool(self.scalar(f"SELECT COUNT(*) FROM {LEDGER_TABLE} WHERE dedup_id = %s", (dedup_id,)))

    def count_connections(self, program: str = WORKER_PROGRAM) -> int:
        """Open sessions on this database other than our own.

        With performance_schema on, only sessions whose connect attribute program_name is
        ``program`` count; without it (MariaDB's default) every session on the database does.
        """
        if self.scalar("SELECT @@performance_schema"):
            return int(self.scalar(
                "SELECT COUNT(*) FROM performance_schema.session_connect_attrs a "
                "JOIN information_schema.PROCESSLIST p ON p.ID = a.PROCESSLIST_ID "
                "WHERE a.ATTR_NAME = 'program_name' AND a.ATTR_VALUE = %s AND p.ID <> CONNECTION_ID()",
                (program,),
            ))
        return int(self.scalar(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
        ))
