"""P6: cold import time of each handler vs a bare ``import boto3``.

Each sample is a fresh interpreter (no module cache, as in a Lambda cold start) that times
only the import statement, so interpreter start-up is not counted on either side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.figures import Figure, median
from sluice.settings import PROJECT_ROOT

HANDLER_MODULES = ("enqueuer.handler", "consumer.handler", "worker.handler")
BASELINE_MODULE = "boto3"

_TIMER = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


class ImportBenchError(RuntimeError):
    """A module could not be imported in a fresh interpreter."""


def import_seconds(module: str, env: dict[str, str]) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _TIMER.format(module=module)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0:
        raise ImportBenchError(f"import {module} failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.strip().splitlines()[-1])


def run(repeats: int) -> list[Figure]:
    # Handlers read settings lazily; the environment still must not point at anything real.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    # Warm the bytecode cache once so every sample measures import, not compilation.
    for module in (BASELINE_MODULE, *HANDLER_MODULES):
        import_seconds(module, env)
    samples: dict[str, list[float]] = {m: [] for m in (BASELINE_MODULE, *HANDLER_MODULES)}
    # Interleaved, so machine load drifts over both sides of each ratio alike.
    for _ in range(repeats):
        for module in samples:
            samples[module].append(import_seconds(module, env))
    baseline = median(samples[BASELINE_MODULE]) * 1000
    figures = []
    for module in HANDLER_MODULES:
        ms = median(samples[module]) * 1000
        figures.append(Figure(
            "P6", f"cold import {module} / import boto3", round(ms, 1), f"{module} ms",
            round(baseline, 1), "boto3 ms", inputs={"repeats": repeats, "statistic": "median"},
            # What a path does not need loads lazily: the config file's pydantic models and YAML
            # (sluice.runtime reads the environment), and the task modules' schemas until the
            # first invocation loads the tasks.
            goal="<= 1.5",
        ))
    return figures


if __name__ == "__main__":
    print(json.dumps([f.to_json() for f in run(3)], indent=1))
