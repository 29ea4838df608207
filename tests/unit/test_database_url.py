"""DATABASE_URL parsing: every malformed URL is one clear error, never a ValueError traceback."""

from __future__ import annotations

import pytest

from sluice_tools.local.mariadb import DatabaseUnavailableError, DatabaseUrl

pytestmark = pytest.mark.unit


def test_a_full_url_parses_with_quoted_parts() -> None:
    # GIVEN a URL with a quoted password and an explicit port
    url = DatabaseUrl.parse("mysql://app:p%40ss@db.example:3307/sluice_1")
    # THEN every part comes back unquoted, and the URL round-trips
    assert (url.user, url.password, url.host, url.port, url.database) == ("app", "p@ss", "db.example", 3307,
                                                                          "sluice_1")
    assert DatabaseUrl.parse(str(url)) == url


@pytest.mark.parametrize(("url", "reason"), [
    ("postgres://root@127.0.0.1/db", "is not mysql://"),
    ("mysql://root@127.0.0.1:x/db", "the port is not a number"),
    ("mysql://root@127.0.0.1:70000/db", "the port is not a number"),
    ("mysql://root@127.0.0.1:3306/bad`name", "may hold only letters"),
    ("mysql://root@127.0.0.1:3306/a-b", "may hold only letters"),
    ("mysql://root:secret@127.0.0.1:x/db", "***"),
])
def test_a_malformed_url_is_a_database_error_naming_the_problem(url: str, reason: str) -> None:
    # WHEN a malformed URL is parsed
    with pytest.raises(DatabaseUnavailableError) as caught:
        DatabaseUrl.parse(url)
    # THEN the error says what is wrong, and never shows the password
    assert reason in str(caught.value)
    assert "secret" not in str(caught.value)
