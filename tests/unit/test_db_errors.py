"""Database URL/secret parsing (DbCredentials, the one MySQL URL type of runtime and tooling)
and error classification: no services needed."""

from __future__ import annotations

import pymysql
import pytest

from sluice.db import DbConfigError, DbCredentials, DbError, TransientDbError, classify

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "exc",
    [
        pymysql.err.OperationalError(2003, "Can't connect to MySQL server"),
        pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query (timed out)"),
        pymysql.err.OperationalError(2006, "MySQL server has gone away"),
        pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"),
        pymysql.err.InternalError(1205, "Lock wait timeout exceeded"),
        pymysql.err.ProgrammingError(1146, "Table 'sluice.invoices' doesn't exist"),
        pymysql.err.InterfaceError(0, ""),
        TimeoutError("timed out"),
        ConnectionResetError(104, "reset by peer"),
    ],
    ids=["no-connect", "lost", "gone-away", "deadlock", "lock-wait", "not-migrated", "interface", "timeout",
         "reset"],
)
def test_not_now_errors_are_transient(exc: BaseException) -> None:
    # GIVEN an error that says "not now" / WHEN classified / THEN it is transient, keeping its code
    error = classify(exc)
    assert isinstance(error, TransientDbError)
    if isinstance(exc, pymysql.MySQLError):
        assert error.code == exc.args[0]


@pytest.mark.parametrize(
    "exc",
    [
        pymysql.err.DataError(1406, "Data too long for column 'description'"),
        pymysql.err.IntegrityError(1452, "Cannot add or update a child row: a foreign key constraint fails"),
        pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax"),
    ],
    ids=["too-long", "foreign-key", "syntax"],
)
def test_refusals_of_the_statement_are_not_transient(exc: BaseException) -> None:
    # GIVEN an error the same statement will always get / WHEN classified / THEN it is a plain DbError
    error = classify(exc)
    assert type(error) is DbError
    assert str(exc.args[1]) in str(error)


def test_a_url_is_parsed_with_defaults_and_escapes() -> None:
    # GIVEN URLs with and without port, password and escaped characters
    # WHEN parsed / THEN every part is read, and url() round-trips
    creds = DbCredentials.from_url("mysql://app:p%40ss%2Fword@db.internal:3307/sluice")
    assert creds == DbCredentials("db.internal", 3307, "app", "p@ss/word", "sluice")
    assert DbCredentials.from_url(creds.url()) == creds
    assert "p@ss" not in creds.redacted()
    assert DbCredentials.from_url("mysql://127.0.0.1/") == DbCredentials("127.0.0.1", 3306, "root", "", "")


@pytest.mark.parametrize(("url", "parts"), [
    ("mysql://app:p%40ss@db.example:3307/sluice_1", ("app", "p@ss", "db.example", 3307, "sluice_1")),
    ("mysql://u:p%40ss%2Fw@db.example:3310/app", ("u", "p@ss/w", "db.example", 3310, "app")),
    ("mariadb://root@127.0.0.1:3306/a$b", ("root", "", "127.0.0.1", 3306, "a$b")),
])
def test_a_full_url_parses_with_quoted_parts(url: str, parts: tuple[str, str, str, int, str]) -> None:
    # GIVEN a URL with quoted characters and an explicit port
    creds = DbCredentials.from_url(url)
    # THEN every part comes back unquoted, and the URL round-trips
    assert (creds.user, creds.password, creds.host, creds.port, creds.database) == parts
    assert DbCredentials.from_url(creds.url()) == creds


def test_another_database_on_the_same_server_and_the_mysql_client_environment() -> None:
    # GIVEN credentials with a password, and the same without one
    creds = DbCredentials.from_url("mysql://app:p%40ss@db.example:3307/sluice_1")
    # WHEN pointed at another database / THEN only the database changes, and "" means none
    assert creds.with_database("other") == DbCredentials("db.example", 3307, "app", "p@ss", "other")
    assert DbCredentials.from_url(creds.with_database("").url()) == creds.with_database("")
    assert creds.database == "sluice_1"  # the original is unchanged
    # WHEN the mysql client's environment is asked for / THEN it names host, port and password
    assert creds.client_env() == {"MYSQL_HOST": "db.example", "MYSQL_TCP_PORT": "3307", "MYSQL_PWD": "p@ss"}
    # AND with no password there is no MYSQL_PWD at all
    assert DbCredentials.from_url("mysql://root@127.0.0.1/x").client_env() == {
        "MYSQL_HOST": "127.0.0.1", "MYSQL_TCP_PORT": "3306"}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgres://u@h/db", "must start with mysql://"),
        ("postgres://root@127.0.0.1/db", "is not mysql://"),
        ("mysql:///db", "no host"),
        ("mysql://u@h:99999/db", "malformed"),
        ("mysql://root@127.0.0.1:x/db", "the port is not a number"),
        ("mysql://root@127.0.0.1:70000/db", "the port is not a number"),
        ("mysql://root:secret@127.0.0.1:x/db", "***"),
        ("mysql://u:secret@[::1/db", "malformed"),
        ("mysql://u@h/a/b", "single database name"),
        ("mysql://root@127.0.0.1:3306/bad`name", "may hold only letters"),
        ("mysql://root@127.0.0.1:3306/a-b", "may hold only letters"),
        (f"mysql://root@127.0.0.1:3306/{'a' * 65}", "at most 64"),
    ],
)
def test_a_bad_url_is_refused_with_the_reason(url: str, words: str) -> None:
    # GIVEN a URL that cannot work / WHEN parsed
    with pytest.raises(DbConfigError) as caught:
        DbCredentials.from_url(url)
    # THEN DbConfigError says why, and never shows the password
    assert words in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("mysql://root:secret@127.0.0.1:x/db", "mysql://root:***@127.0.0.1:x/db"),
    ("mysql://root:se@c/ret@h/db", "mysql://root:***@h/db"),  # unquoted @ and / in the password
    ("mysql://root@h/db", "mysql://root@h/db"),
    ("not a url", "not a url"),
])
def test_a_url_is_shown_with_its_password_masked(url: str, shown: str) -> None:
    # GIVEN a URL, well formed or not / WHEN redacted / THEN everything but the password is kept
    assert DbCredentials.redact_url(url) == shown


def test_an_rds_secret_is_read_and_a_broken_one_refused() -> None:
    # GIVEN the RDS secret shape, one with an empty password, and broken ones
    secret = {"engine": "mariadb", "username": "app", "password": "pw", "host": "h", "port": 3306,
              "dbname": "s"}
    # WHEN read / THEN the credentials follow, defaults fill gaps, and problems are named
    assert DbCredentials.from_secret(secret) == DbCredentials("h", 3306, "app", "pw", "s")
    no_db = {"username": "root", "password": "", "host": "h"}
    assert DbCredentials.from_secret(no_db, "sluice") == DbCredentials("h", 3306, "root", "", "sluice")
    with pytest.raises(DbConfigError, match="lacks username, password"):
        DbCredentials.from_secret({"host": "h"})
    with pytest.raises(DbConfigError, match="port"):
        DbCredentials.from_secret({**secret, "port": "x"})
    with pytest.raises(DbConfigError, match="not a JSON object"):
        DbCredentials.from_secret("just a string")
