"""Database URL/secret parsing and error classification: no services needed."""

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


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgres://u@h/db", "must start with mysql://"),
        ("mysql:///db", "no host"),
        ("mysql://u@h:99999/db", "malformed"),
        ("mysql://u@h/a/b", "single database name"),
    ],
)
def test_a_bad_url_is_refused_with_the_reason(url: str, words: str) -> None:
    # GIVEN a URL that cannot work / WHEN parsed / THEN DbConfigError says why
    with pytest.raises(DbConfigError, match=words):
        DbCredentials.from_url(url)


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
