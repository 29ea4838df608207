"""Package serverless.yml once per session per stage, with the project's own `make package`.

Each stage is packaged into a directory of this session's own (PACKAGE_DIR), so runs of other
sessions in the same working tree do not collide. The dev stage is the plain deploy; prod is the
example with a managed RDS MariaDB in a VPC, JWT auth and an alarm e-mail; lanes is the three-lane
stage (a queue, DLQ, consumer and worker per lane).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sluice.settings import PROJECT_ROOT, Settings, load_settings

TEMPLATE = "cloudformation-template-update-stack.json"
CREATE_TEMPLATE = "cloudformation-template-create-stack.json"


def run_make(*args: str, cwd: Path = PROJECT_ROOT, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # packaging needs no AWS
    env.pop("SLUICE_CONFIG_DIR", None)
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class Packaged:
    stage: str
    settings: Settings
    directory: Path

    @property
    def template(self) -> dict[str, Any]:
        return json.loads((self.directory / TEMPLATE).read_text())

    @property
    def create_template(self) -> dict[str, Any]:
        return json.loads((self.directory / CREATE_TEMPLATE).read_text())

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.template["Resources"])


@pytest.fixture(scope="session")
def package_stage(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Packaged]:
    done: dict[str, Packaged] = {}

    def package(stage: str) -> Packaged:
        if stage not in done:
            directory = tmp_path_factory.mktemp(f"package-{stage}")
            result = run_make("package", f"STAGE={stage}", f"PACKAGE_DIR={directory}")
            assert result.returncode == 0, f"make package STAGE={stage}:\n{result.stdout}\n{result.stderr}"
            done[stage] = Packaged(stage, load_settings(stage, PROJECT_ROOT / "config"), directory)
        return done[stage]

    return package


@pytest.fixture(scope="session")
def dev(package_stage: Callable[[str], Packaged]) -> Packaged:
    return package_stage("dev")


@pytest.fixture(scope="session")
def prod(package_stage: Callable[[str], Packaged]) -> Packaged:
    return package_stage("prod")


@pytest.fixture(scope="session")
def lanes(package_stage: Callable[[str], Packaged]) -> Packaged:
    """The three-lane stage (config/lanes.yml): a queue, DLQ, consumer and worker per lane."""
    return package_stage("lanes")


@pytest.fixture(scope="session", params=["dev", "prod", "lanes"])
def every_stage(request: pytest.FixtureRequest, package_stage: Callable[[str], Packaged]) -> Packaged:
    """dev, prod and the three-lane stage: for what holds whatever the lanes."""
    return package_stage(str(request.param))


@pytest.fixture(scope="session", params=["dev", "prod"])
def packaged(request: pytest.FixtureRequest, package_stage: Callable[[str], Packaged]) -> Packaged:
    return package_stage(str(request.param))


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov in its own venv, made by the Makefile rule on first use."""
    stamp = ".venv-checkov/.installed-stamp"
    result = run_make(stamp)
    assert result.returncode == 0, f"installing checkov failed:\n{result.stdout}\n{result.stderr}"
    return PROJECT_ROOT / ".venv-checkov" / "bin" / "checkov"


def copy_for_make(target: Path) -> Path:
    """A throwaway copy of what `make package` reads, sharing the installed tools by symlink.

    Files keep their times (copy2), so make sees the shared .venv and node_modules as up to date."""
    for name in ("Makefile", "pyproject.toml", "package.json", "package-lock.json", "serverless.yml"):
        shutil.copy2(PROJECT_ROOT / name, target / name)
    for name in ("scripts", "infra", "config", "requirements"):
        shutil.copytree(PROJECT_ROOT / name, target / name, copy_function=shutil.copy2)
    for name in (".venv", "node_modules"):
        (target / name).symlink_to(PROJECT_ROOT / name, target_is_directory=True)
    return target
