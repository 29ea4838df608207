"""cfn-lint and checkov on the packaged templates; `make package` refuses an unsafe config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sluice.settings import PROJECT_ROOT, load_settings

from .conftest import TEMPLATE, Packaged, copy_for_make, run_make

pytestmark = pytest.mark.infra


def test_cfn_lint_finds_no_errors(every_stage: Packaged) -> None:
    # GIVEN the packaged template of the stage
    template = every_stage.directory / TEMPLATE
    # WHEN cfn-lint checks it (W3005 is the framework's own redundant DependsOn; see the Makefile)
    result = subprocess.run([str(PROJECT_ROOT / ".venv/bin/cfn-lint"), "--ignore-checks", "W3005", "--format",
                             "parseable", "--", str(template)], capture_output=True, text=True, check=False)
    # THEN nothing is reported at all (exit 0: no error, no warning)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_checkov_fails_nothing_and_every_skip_is_justified(every_stage: Packaged, checkov: Path) -> None:
    # GIVEN the packaged template of the stage
    template = every_stage.directory / TEMPLATE
    # WHEN checkov scans it offline
    result = subprocess.run([str(checkov), "--compact", "--skip-download", "--framework",
                             "cloudformation", "-o", "json", "-f", str(template)],
                            capture_output=True, text=True, check=False)
    report = json.loads(result.stdout)
    # THEN no check fails ...
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and result.returncode == 0, failed
    assert report["summary"]["passed"] > 40  # it did scan the resources
    # ... and each skip carries its reason beside it in the template
    skipped = report["results"]["skipped_checks"]
    assert skipped, "expected the documented skips"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 40, f"{check['check_id']} on {check['resource']} has no real justification"


def test_make_package_refuses_an_unsafe_config(tmp_path: Path) -> None:
    # GIVEN a stage whose visibility timeout is shorter than the consumer's time budget
    tree = copy_for_make(tmp_path)
    unsafe = (tree / "config" / "dev.yml").read_text().replace("visibility_s: 180", "visibility_s: 45")
    (tree / "config" / "broken.yml").write_text(unsafe)
    problems = load_settings("broken", tree / "config").problems()
    assert problems, "the fixture config must be unsafe"
    # WHEN packaging it
    result = run_make("package", "STAGE=broken", f"PACKAGE_DIR={tmp_path / 'out'}", cwd=tree, timeout=120)
    # THEN make fails with `sluice config check`'s reason and nothing is packaged
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "config/broken.yml is unsafe" in output
    assert "queue.visibility_s (45) must exceed drain.timeout_s (60)" in output
    assert not (tmp_path / "out").exists()
