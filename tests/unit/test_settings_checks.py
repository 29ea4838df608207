"""Settings.problems: every unsafe combination is caught with a reason; shipped configs pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.settings import PROJECT_ROOT, RuntimeConfig, Settings, SettingsError, load_settings

pytestmark = pytest.mark.unit


def safe(**sections: Any) -> Settings:
    """A consistent baseline, with some sections overridden (a list replaces the baseline's)."""
    base: dict[str, Any] = {
        "tasks": [{"module": "worker.tasks.invoices", "migrations": "worker/tasks/invoices/migrations"}],
        "queue": {"name": "q", "visibility_s": 180},
        "drain": {"timeout_s": 60, "safety_margin_ms": 5000, "max_parallel": 4, "consumers": 1},
        "worker": {"timeout_s": 30, "reserved_concurrency": 4},
        "database": {"url": "mysql://u@h/db"},
    }
    for name, values in sections.items():
        base[name] = values if isinstance(values, list) else {**base.get(name, {}), **values}
    return Settings(stage="t", **base)


@pytest.mark.parametrize("stage", ["dev", "prod", "local"])
def test_shipped_configs_are_safe(stage: str) -> None:
    # GIVEN the config files in the repository / THEN they have no problems
    assert load_settings(stage).problems() == []


def test_baseline_is_safe() -> None:
    assert safe().problems() == []


@pytest.mark.parametrize(
    ("sections", "reason"),
    [
        ({"queue": {"visibility_s": 60}}, "queue.visibility_s (60) must exceed drain.timeout_s"),
        ({"worker": {"timeout_s": 56}}, "worker.timeout_s (56) plus drain.safety_margin_ms"),
        ({"queue": {"visibility_s": 100}, "drain": {"timeout_s": 20, "safety_margin_ms": 0},
          "worker": {"timeout_s": 100}}, "plus worker.timeout_s (100), 120 s"),
        # received at a drain's start, dispatched with only the margin left: 60 - 5 + 30 = 85 s held
        ({"queue": {"visibility_s": 85}}, "plus worker.timeout_s (30), 85 s: a message must stay hidden"),
        ({"drain": {"max_parallel": 8}}, "above worker.reserved_concurrency"),
        ({"worker": {"reserved_concurrency": 8}}, "below worker.reserved_concurrency (8): set them equal"),
        ({"database": {"url": "", "secret": "s", "managed": True, "backup_retention_days": 0}},
         "would keep no automated backups"),
        ({"drain": {"consumers": 5}}, "each consumer needs at least one worker slot"),
        ({"drain": {"min_parallel": 5}}, "drain.min_parallel (5) exceeds drain.max_parallel (4)"),
        ({"drain": {"safety_margin_ms": 60000}}, "leaves no budget"),
        ({"queue": {"dlq_retention_days": 4}}, "dlq_retention_days (4) must be longer"),
        ({"api": {"auth": "jwt"}}, "jwt_issuer or api.jwt_audience is empty"),
        ({"database": {"url": ""}}, "database needs one of url, secret or existing_secret_arn"),
        ({"database": {"managed": True}}, "database.managed is true but database.url is set"),
        ({"queue": {"max_tps": 1}, "enqueuer": {"max_items": 5000, "timeout_s": 10}},
         "cannot be sent within enqueuer.timeout_s"),
    ],
)
def test_each_rule_fires_with_its_reason(sections: dict[str, dict[str, Any]], reason: str) -> None:
    # GIVEN settings broken in one way
    settings = safe(**sections)
    # WHEN checked / THEN the problem is named, and check() refuses with it
    assert any(reason in p for p in settings.problems()), settings.problems()
    with pytest.raises(SettingsError, match="unsafe"):
        settings.check()


def test_runtime_config_round_trips_through_the_environment() -> None:
    # GIVEN the environment serverless.yml would derive / WHEN read back by a handler
    settings = load_settings("local")
    env = settings.runtime_env(queue_url="u", dlq_url="d", worker_function="w")
    config = RuntimeConfig.from_env(env)
    # THEN the handler sees the same numbers
    assert (config.max_parallel, config.batch_size, config.max_rate) == (
        settings.drain.max_parallel, settings.worker.batch_size, settings.drain.max_rate)
    assert config.slots_per_consumer == settings.drain.max_parallel // settings.drain.consumers
    assert (config.min_parallel, config.adaptive) == (settings.drain.min_parallel, settings.drain.adaptive)


@pytest.mark.parametrize("adaptive", [True, False])
def test_the_adaptive_limit_settings_reach_the_handlers(adaptive: bool) -> None:
    # GIVEN a floor and the adaptive switch in the config / WHEN read back by a handler
    settings = safe(drain={"min_parallel": 2, "adaptive": adaptive})
    config = RuntimeConfig.from_env(settings.runtime_env(queue_url="u", dlq_url="d", worker_function="w"))
    # THEN the handler sees the same floor and switch
    assert (config.min_parallel, config.adaptive) == (2, adaptive)
    assert config.min_slots_per_consumer == 2


def test_the_floor_is_shared_by_the_consumers_like_the_cap() -> None:
    # GIVEN a floor of 4 and a cap of 8 over two consumers / THEN each has [2, 4]; a floor below
    # the number of consumers still leaves each consumer one worker
    env = {"SLUICE_DRAIN_MAX_PARALLEL": "8", "SLUICE_DRAIN_CONSUMERS": "2"}
    config = RuntimeConfig.from_env({**env, "SLUICE_DRAIN_MIN_PARALLEL": "4"})
    assert (config.min_slots_per_consumer, config.slots_per_consumer) == (2, 4)
    assert RuntimeConfig.from_env({**env, "SLUICE_DRAIN_MIN_PARALLEL": "1"}).min_slots_per_consumer == 1


def test_min_parallel_below_one_is_rejected_when_loading(tmp_path: Path) -> None:
    # GIVEN a config whose floor is 0 / WHEN loaded / THEN a SettingsError names the key
    raw = yaml.safe_load((PROJECT_ROOT / "config" / "dev.yml").read_text())
    raw["drain"]["min_parallel"] = 0
    (tmp_path / "dev.yml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SettingsError, match="drain.min_parallel"):
        load_settings("dev", tmp_path)


def test_runtime_config_rejects_bad_numbers() -> None:
    # GIVEN a non-numeric or out-of-range variable / THEN a clear SettingsError naming it
    with pytest.raises(SettingsError, match="SLUICE_DRAIN_MAX_PARALLEL"):
        RuntimeConfig.from_env({"SLUICE_DRAIN_MAX_PARALLEL": "many"})
    with pytest.raises(SettingsError, match="SLUICE_WORKER_BATCH_SIZE"):
        RuntimeConfig.from_env({"SLUICE_WORKER_BATCH_SIZE": "101"})


@pytest.mark.parametrize(
    ("tasks", "reason"),
    [
        ([], "tasks lists no task module"),
        ([{"module": "worker.tasks.invoices"}, {"module": "worker.tasks.invoices"}],
         "tasks names module 'worker.tasks.invoices' more than once"),
        ([{"module": "worker.tasks.invoices", "migrations": "worker/tasks/nowhere"}],
         "the migrations folder 'worker/tasks/nowhere' of worker.tasks.invoices does not exist"),
    ],
)
def test_task_module_problems(tasks: list[dict[str, Any]], reason: str) -> None:
    # GIVEN a config whose task modules are missing, repeated or point at no migrations folder
    # THEN config check names the problem
    assert any(reason in p for p in safe(tasks=tasks).problems())


def test_task_modules_reach_the_handlers_environment() -> None:
    # GIVEN two task modules, one with a migrations folder and settings
    settings = safe(tasks=[{"module": "worker.tasks.invoices", "migrations": "worker/tasks/invoices/migrations",
                            "settings": {"url": "http://vendor"}},
                           {"module": "app.reminders"}])
    # WHEN the handlers' environment is derived
    env = settings.runtime_env(queue_url="q", dlq_url="d", worker_function="w")
    # THEN it names both modules in order, the one folder, and the settings by module
    assert env["SLUICE_TASK_MODULES"] == "worker.tasks.invoices,app.reminders"
    assert env["SLUICE_TASK_MIGRATIONS"] == "worker.tasks.invoices=worker/tasks/invoices/migrations"
    assert env["SLUICE_TASK_SETTINGS"] == '{"worker.tasks.invoices":{"url":"http://vendor"}}'


def test_a_module_name_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="module"):
        safe(tasks=[{"module": "worker/tasks/invoices.py"}])
    with pytest.raises(SettingsError, match="SLUICE_DRAIN_ADAPTIVE='maybe' must be 'true' or 'false'"):
        RuntimeConfig.from_env({"SLUICE_DRAIN_ADAPTIVE": "maybe"})
    with pytest.raises(SettingsError, match="SLUICE_DRAIN_MIN_PARALLEL"):
        RuntimeConfig.from_env({"SLUICE_DRAIN_MIN_PARALLEL": "5", "SLUICE_DRAIN_MAX_PARALLEL": "4"})
    with pytest.raises(SettingsError, match="SLUICE_DRAIN_MIN_PARALLEL"):
        RuntimeConfig.from_env({"SLUICE_DRAIN_MIN_PARALLEL": "0"})
