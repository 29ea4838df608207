"""A team adds its own task without touching sluice/ (README "Add your own task"): a task
module in a package of its own, its migration, one config entry, `sluice db migrate`, an item
sent through the HTTP API, applied by the local stack's workers."""

from __future__ import annotations

import json
import subprocess
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sluice.aws import Queue
from sluice.settings import PROJECT_ROOT, load_settings
from sluice_tools.cli import app
from sluice_tools.local.env import restore_environment, use_local_stack
from sluice_tools.local.stack import LocalStack
from sluice_tools.ops.dlq import list_dead_letters
from tests.helpers import drop_machine_database, eventually, sql

pytestmark = pytest.mark.e2e

TASK_MODULE = '''
    """Reminders: the task a team adds for itself."""

    from pydantic import BaseModel, Field

    from sluice import PermanentTaskError, Transaction, WorkItem, task


    class Reminder(BaseModel):
        user: str = Field(min_length=1, max_length=64)
        text: str = Field(min_length=1, max_length=500)


    @task("reminder.send", Reminder)
    def send_reminder(tx: Transaction, payload: Reminder, item: WorkItem) -> None:
        if payload.user == "nobody":
            raise PermanentTaskError("no such user")
        tx.execute("INSERT INTO reminders (item_key, user_name, text) VALUES (%s, %s, %s)",
                   (item.key, payload.user, payload.text))
'''
MIGRATION = """
CREATE TABLE reminders (
    item_key  VARCHAR(256) NOT NULL PRIMARY KEY,
    user_name VARCHAR(64)  NOT NULL,
    text      VARCHAR(500) NOT NULL
) ENGINE = InnoDB;
"""


def sluice_tree_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", "sluice/"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_a_task_of_the_teams_own_runs_without_touching_sluice(tmp_path: Path) -> None:
    before = sluice_tree_state()
    # GIVEN a package of the team's own (outside the project), with a task module and its migration
    package = f"ownapp_{uuid.uuid4().hex[:8]}"
    module_dir = tmp_path / "app" / package / "reminders"
    (module_dir / "migrations").mkdir(parents=True)
    (tmp_path / "app" / package / "__init__.py").write_text("")
    (module_dir / "__init__.py").write_text(textwrap.dedent(TASK_MODULE))
    (module_dir / "migrations" / "0001_reminders.sql").write_text(MIGRATION)
    # AND the one config entry that names it, in a copy of config/local.yml
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    local_yml = (PROJECT_ROOT / "config" / "local.yml").read_text()
    entry = f"  - module: {package}.reminders\n    migrations: {module_dir / 'migrations'}\n"
    (config_dir / "local.yml").write_text(local_yml.rstrip("\n") + "\n" + entry)
    name = f"sluice_own_{uuid.uuid4().hex[:8]}"
    database_url = f"mysql://root@127.0.0.1:3306/{name}"
    try:
        # WHEN `sluice db migrate` runs with that config
        migrated = CliRunner().invoke(app, ["db", "migrate", "--stage", "local", "--json"],
                                      env={"DATABASE_URL": database_url, "SLUICE_CONFIG_DIR": str(config_dir)})
        # THEN the framework's ledger, the examples' and the new module's migrations applied
        assert migrated.exit_code == 0, migrated.output
        assert json.loads(migrated.output)["applied"][-1] == f"{package}.reminders:0001_reminders"

        # WHEN the local stack runs with it and an item is sent through the HTTP API
        settings = load_settings("local", config_dir)
        settings = settings.model_copy(update={
            "queue": settings.queue.model_copy(update={"name": f"own-{uuid.uuid4().hex[:8]}"})})
        with LocalStack(settings, database_url=database_url, tick_s=0.5, local_dir=tmp_path / "stack",
                        extra_function_env={"PYTHONPATH": str(tmp_path / "app")}) as stack:
            items = [{"task": "reminder.send", "key": "R-1", "payload": {"user": "ada", "text": "stand-up at 10"}},
                     {"task": "reminder.send", "key": "R-2", "payload": {"user": "nobody", "text": "lost"}}]
            request = urllib.request.Request(f"{stack.env['SLUICE_API_URL']}/jobs", method="POST",
                                             data=json.dumps({"items": items}).encode())
            with urllib.request.urlopen(request, timeout=60) as reply:
                assert reply.status == 202
            # THEN the workers applied it with the team's own SQL, once
            rows = eventually(lambda: sql(database_url, "SELECT item_key, user_name, text FROM reminders"),
                              30, "the reminder applied")
            assert rows == [("R-1", "ada", "stand-up at 10")]
            # AND the item its task refused is in the DLQ with the task's reason
            assert stack.queues is not None
            dlq = Queue(stack.queues.dlq_url)
            previous = use_local_stack(stack.env)
            try:
                letters = eventually(lambda: list_dead_letters(dlq).letters, 30, "the dead letter")
            finally:
                restore_environment(previous)
            assert [(d.key, d.reason) for d in letters] == [("R-2", "no such user")]
    finally:
        drop_machine_database(name)
    # AND no file of sluice/ changed
    assert sluice_tree_state() == before
