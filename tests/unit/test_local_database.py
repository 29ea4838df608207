"""The local stack's database: a malformed DATABASE_URL stops it with one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice_tools.local.mariadb import DatabaseUnavailableError, find_database
from sluice_tools.local.processes import LocalServiceError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("url", "reason"), [
    ("postgres://root:secret@127.0.0.1/db", "must start with mysql://"),
    ("mysql://root:secret@127.0.0.1:x/db", "the port is not a number"),
    ("mysql://root:secret@127.0.0.1:3306/a-b", "may hold only letters"),
])
def test_a_malformed_database_url_is_a_local_service_error(tmp_path: Path, url: str, reason: str) -> None:
    # GIVEN DATABASE_URL set to a URL that cannot work
    # WHEN the local stack looks for its database (nothing is connected to or started)
    with pytest.raises(DatabaseUnavailableError) as caught:
        find_database("sluice", tmp_path / "mariadb", database_url=url)
    # THEN it is the error `sluice local up` reports in one line, naming the problem without the password
    assert isinstance(caught.value, LocalServiceError)
    assert reason in str(caught.value)
    assert "secret" not in str(caught.value)
    assert not (tmp_path / "mariadb").exists()
