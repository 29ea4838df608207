"""The worker's reused connection: revalidated after idling, and a rotated password re-read.

Real MariaDB (the session's test database) and a real secret on the moto server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from sluice.db import Database, DbCredentials, DbUnavailableError, TransientDbError, connect_admin
from tests.conftest import REGION, admin_url

pytestmark = pytest.mark.integration


def thread_id(db: Database) -> int:
    with db.transaction() as tx:
        tx._cur.execute("SELECT CONNECTION_ID()")
        return int(tx._cur.fetchone()[0])


def kill_on_the_server(connection_id: int) -> None:
    admin = connect_admin(admin_url())
    with admin.cursor() as cur:
        cur.execute(f"KILL CONNECTION {connection_id}")
    admin.close()


def test_a_connection_the_server_dropped_is_replaced_after_idling(database_url: str) -> None:
    # GIVEN a warm connection that counts as idle at once
    db = Database(url=database_url, revalidate_after_s=0)
    first = thread_id(db)
    # WHEN the server drops it (as wait_timeout or a restart would)
    kill_on_the_server(first)
    # THEN the next use pings, finds it dead, and works on a new connection instead of failing
    assert thread_id(db) != first
    db.close()


@pytest.fixture
def rotating_user(database_url: str, moto_aws: str) -> Iterator[dict[str, Any]]:
    """A MariaDB user of the test's own, its credentials in an RDS-shaped secret on moto."""
    creds = DbCredentials.from_url(database_url)
    user, password = f"rot_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = connect_admin(admin_url())
    with admin.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT ALL ON `{creds.database}`.* TO '{user}'@'%'")
    secrets = boto3.client("secretsmanager", endpoint_url=moto_aws, region_name=REGION)
    secret_id = f"sluice/test/rot-{uuid.uuid4().hex[:8]}"

    def secret(pw: str) -> str:
        return json.dumps({"engine": "mariadb", "username": user, "password": pw, "host": creds.host,
                           "port": creds.port, "dbname": creds.database})

    secrets.create_secret(Name=secret_id, SecretString=secret(password))
    try:
        yield {"user": user, "secret_id": secret_id, "db_name": creds.database, "admin": admin,
               "put": lambda pw: secrets.put_secret_value(SecretId=secret_id, SecretString=secret(pw))}
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()


def test_a_rotated_password_is_read_again_from_the_secret(rotating_user: dict[str, Any]) -> None:
    # GIVEN a worker connected with the secret's password, the secret cached for 5 minutes
    db = Database(secret_id=rotating_user["secret_id"], db_name=rotating_user["db_name"], secret_max_age_s=300)
    thread_id(db)
    # WHEN the password is rotated (server and secret), and the connection is lost
    new_password = uuid.uuid4().hex
    with rotating_user["admin"].cursor() as cur:
        cur.execute(f"ALTER USER '{rotating_user['user']}'@'%%' IDENTIFIED BY %s", (new_password,))
    rotating_user["put"](new_password)
    db.close()
    # THEN the first reconnect fails with access denied (the cached password: a transient error,
    # so the messages wait instead of dead-lettering) ...
    with pytest.raises(DbUnavailableError) as caught:
        db.connection()
    assert caught.value.code == 1045
    # ... and the next one reads the secret again, past its cache, and connects
    assert thread_id(db) > 0
    db.close()


def test_the_killed_connection_is_not_handed_out_again(database_url: str) -> None:
    # GIVEN a connection the server dropped, within the revalidation interval (no ping)
    db = Database(url=database_url, revalidate_after_s=3600)
    first = thread_id(db)
    kill_on_the_server(first)
    # WHEN a transaction runs on it, it fails as a transient (retryable) error
    with pytest.raises(TransientDbError):
        thread_id(db)
    # THEN the broken connection was dropped, and the next transaction works on a new one
    assert thread_id(db) != first
    db.close()
