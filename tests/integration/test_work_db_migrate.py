"""`sluice db migrate` against the real MariaDB, through typer's CliRunner."""

from __future__ import annotations

import time

import pytest
from awslambdaric.lambda_context import LambdaContext
from typer.testing import CliRunner

from sluice.db import Database
from sluice_tools.cli import app
from sluice_tools.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE
from tests.conftest import free_port
from worker.tasks import invoices

pytestmark = pytest.mark.integration


def test_migrate_local_applies_every_migration_once(scratch_url: str) -> None:
    runner = CliRunner()

    # GIVEN DATABASE_URL naming a database that does not exist yet
    # WHEN `sluice db migrate --stage local` runs twice
    env = {"DATABASE_URL": scratch_url}
    first = runner.invoke(app, ["db", "migrate", "--stage", "local", "--json"], env=env)
    second = runner.invoke(app, ["db", "migrate", "--stage", "local"], env=env)

    # THEN the first run creates and migrates it, the second finds nothing to do
    assert first.exit_code == 0, first.output
    # (the framework's ledger, then the task module named in config/local.yml)
    assert all(f'"{m}"' in first.output for m in ("0001_ledger", "worker.tasks.invoices:0001_invoices"))
    assert second.exit_code == 0, second.output
    assert "up to date" in second.output
    db = Database(url=scratch_url)
    assert db.count_processed() == 0 and invoices.count(db) == 0
    db.close()


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("postgres://someone@127.0.0.1/db", EXIT_USAGE, "must start with mysql://"),
        ("mysql://root@127.0.0.1:notaport/db", EXIT_USAGE, "malformed"),
        ("mysql://root@127.0.0.1:{port}/db", EXIT_UNAVAILABLE, "cannot reach the database"),
    ],
    ids=["wrong-scheme", "bad-port", "nothing-listening"],
)
def test_migrate_with_a_bad_url_says_why_without_a_traceback(url: str, code: int, words: str) -> None:
    # GIVEN a DATABASE_URL that cannot work
    env = {"DATABASE_URL": url.format(port=free_port())}

    # WHEN migrating
    result = CliRunner().invoke(app, ["db", "migrate", "--stage", "local"], env=env)

    # THEN one clear line and a non-zero exit code, no traceback
    assert result.exit_code == code, result.output
    assert words in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_migrate_function_migrates_with_the_worker_credentials(scratch_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.migrate

    # GIVEN the migrate function's environment pointing at an empty database
    monkeypatch.setenv("DATABASE_URL", scratch_url)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sluice-test-migrate")
    context = LambdaContext("req-1", None, None, int(time.time() * 1000) + 60_000,
                            "arn:aws:lambda:us-east-1:123456789012:function:sluice-test-migrate")

    # WHEN it is invoked twice
    first = worker.migrate.lambda_handler({}, context)
    second = worker.migrate.lambda_handler({}, context)

    # THEN it applies every migration once and reports what it did, without the password
    assert first["applied"] == ["0001_ledger", "worker.tasks.invoices:0001_invoices",
                                "worker.tasks.notify:0001_notifications",
                                "worker.tasks.accounting:0001_accounting_posts"] == first["known"]
    assert second["applied"] == []
    assert first["database"].endswith(scratch_url.rsplit("/", 1)[1])
