"""Fixtures every integration test module shares: the session database, and scratch ones."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from sluice.db import Database, connect_admin
from tests.conftest import admin_url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The session's migrated database, through one reused connection (as a worker holds one)."""
    database = Database(url=database_url, read_timeout=3)
    yield database
    database.close()


@pytest.fixture
def scratch_url() -> Iterator[str]:
    """A database name of this test's own; what the test runs creates it, the fixture drops it."""
    name = f"sluice_scratch_{uuid.uuid4().hex[:10]}"
    base = admin_url().rstrip("/")
    yield f"{base}/{name}"
    admin = connect_admin(base + "/")
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()
