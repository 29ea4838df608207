"""Task modules own their schema: the framework's migrations, then each task module's, by yoyo,
against the real MariaDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.db import Database, connect_admin
from sluice.migrations import MigrationError, MigrationSource, apply_migrations, migration_ids
from tests.conftest import admin_url

pytestmark = pytest.mark.integration


def tables(url: str) -> set[str]:
    db = Database(url=url)
    try:
        return {str(r[0]) for r in db.read("SHOW TABLES")}
    finally:
        db.close()


def test_a_task_modules_new_migration_applies_to_a_live_database(scratch_url: str, tmp_path: Path) -> None:
    # GIVEN a database migrated with a task module that has one migration
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_reminders.sql").write_text(
        "CREATE TABLE reminders (item_key VARCHAR(256) NOT NULL PRIMARY KEY) ENGINE = InnoDB;\n")
    source = MigrationSource("app.reminders", folder)
    first = apply_migrations(scratch_url, [source])
    # WHEN the module gains a second migration and migrate runs again
    (folder / "0002_reminder_sent_at.sql").write_text("ALTER TABLE reminders ADD COLUMN sent_at DATETIME NULL;\n")
    second = apply_migrations(scratch_url, [source])
    third = apply_migrations(scratch_url, [source])
    # THEN the framework's ledger came first, the task's ids are its own (a 0001 beside the
    # framework's 0001), only the new file ran the second time, and nothing the third
    assert first == ["0001_ledger", "app.reminders:0001_reminders"]
    assert second == ["app.reminders:0002_reminder_sent_at"]
    assert third == []
    db = Database(url=scratch_url)
    assert [r[0] for r in db.read("SHOW COLUMNS FROM reminders")] == ["item_key", "sent_at"]
    db.close()


def test_two_task_modules_apply_in_config_order(scratch_url: str, tmp_path: Path) -> None:
    # GIVEN two modules, the second's table referencing the first's
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "0001_accounts.sql").write_text("CREATE TABLE accounts (id INT PRIMARY KEY) ENGINE = InnoDB;\n")
    (b / "0001_payments.sql").write_text(
        "CREATE TABLE payments (id INT PRIMARY KEY, account_id INT NOT NULL, "
        "FOREIGN KEY (account_id) REFERENCES accounts (id)) ENGINE = InnoDB;\n")
    sources = [MigrationSource("app.accounts", a), MigrationSource("app.payments", b)]
    # WHEN migrated / THEN in that order (the foreign key would fail the other way round)
    assert apply_migrations(scratch_url, sources) == migration_ids(sources)
    assert {"accounts", "payments", "processed_messages"} <= tables(scratch_url)


def test_a_failing_task_migration_names_itself_and_leaves_the_rest(scratch_url: str, tmp_path: Path) -> None:
    # GIVEN a task migration with a statement MariaDB refuses
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "0001_broken.sql").write_text("CREATE TABLE broken (id INT PRIMARY KEY, id INT);\n")
    # WHEN migrating / THEN a MigrationError naming that migration; the ledger is there
    with pytest.raises(MigrationError, match="migration app.broken:0001_broken failed"):
        apply_migrations(scratch_url, [MigrationSource("app.broken", folder)])
    assert "processed_messages" in tables(scratch_url)
    assert "broken" not in tables(scratch_url)


def test_a_missing_migrations_folder_is_refused_before_anything_runs(scratch_url: str, tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist"):
        apply_migrations(scratch_url, [MigrationSource("app.gone", tmp_path / "nowhere")])
    assert not tables_exist(scratch_url)


def tables_exist(url: str) -> bool:
    admin = connect_admin(admin_url().rstrip("/") + "/")
    with admin.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                    (url.rsplit("/", 1)[1],))
        row = cur.fetchone()
    admin.close()
    return bool(row and row[0])


def test_a_database_migrated_before_tasks_owned_their_schema_upgrades(scratch_url: str) -> None:
    # GIVEN a database whose invoice tables came from the framework's old migrations, recorded
    # under the old ids (0002_invoices, 0003_invoice_apply_count)
    apply_migrations(scratch_url, [])
    db = Database(url=scratch_url)
    db.read("CREATE TABLE customers (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(64) NOT "
            "NULL UNIQUE, name VARCHAR(200) NOT NULL, created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3))")
    db.read("CREATE TABLE invoices (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, item_key VARCHAR(256) "
            "NOT NULL UNIQUE, customer_id INT UNSIGNED NOT NULL, amount_cents BIGINT NOT NULL, currency CHAR(3) "
            "NOT NULL, description VARCHAR(500) NULL, apply_count INT UNSIGNED NOT NULL DEFAULT 1, "
            "created_at DATETIME(3) NOT NULL)")
    db.read("INSERT INTO customers (code, name) VALUES ('acme', 'Acme Corporation')")
    db.close()
    # WHEN the invoice module's own migration runs on it
    from sluice.migrations import TASK_ROOT

    applied = apply_migrations(scratch_url, [MigrationSource("worker.tasks.invoices",
                                                             TASK_ROOT / "worker/tasks/invoices/migrations")])
    # THEN it applies without error and changes nothing that was there
    assert applied == ["worker.tasks.invoices:0001_invoices"]
    db = Database(url=scratch_url)
    assert db.scalar("SELECT COUNT(*) FROM customers WHERE code = 'acme'") == 1
    db.close()
