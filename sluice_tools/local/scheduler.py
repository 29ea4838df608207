"""The local schedule: what EventBridge does for the consumer, every ``local.tick_s`` seconds.

Each tick sends one scheduled-event payload (the shape of ``sam local generate-event
cloudwatch scheduled-event``) to each of the ``drain.consumers`` consumers. Every invoke runs
on a thread of its own, so a tick never waits for a drain: a consumer still busy with the
previous tick is throttled (429, reserved concurrency = consumers), and that tick is skipped.
On AWS the throttled async event is retried until its maximum event age (60 s in
serverless.yml), so there a tick may start up to a minute late instead; it is never queued
for longer.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluice.aws import AwsError, InvokeResult, ThrottledError

ACCOUNT_ID = "123456789012"


def scheduled_event(rule_arn: str, region: str, when: datetime | None = None) -> dict[str, Any]:
    when = when or datetime.now(UTC)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


@dataclass
class SchedulerStats:
    ticks: int = 0
    invocations: int = 0
    completed: int = 0
    throttled: int = 0
    errors: int = 0
    running: int = 0
    last_error: str = ""
    recent_reports: deque[Any] = field(default_factory=lambda: deque(maxlen=20))

    def as_dict(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "invocations": self.invocations, "completed": self.completed,
                "throttled": self.throttled, "errors": self.errors, "running": self.running,
                "last_error": self.last_error, "recent_reports": list(self.recent_reports)}


class Scheduler:
    """Ticks on a thread; ``invoke`` is a RequestResponse invoke of the consumer function."""

    def __init__(self, invoke: Callable[[dict[str, Any]], InvokeResult], *, consumers: int, tick_s: float,
                 rule_arn: str, region: str) -> None:
        self.invoke = invoke
        self.consumers = consumers
        self.tick_s = tick_s
        self.rule_arn = rule_arn
        self.region = region
        self._stats = SchedulerStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="schedule", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop ticking. Drains already running are left to the Lambda service's own stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._stats.as_dict()

    def tick(self) -> None:
        """Start one scheduled invoke per consumer (what one EventBridge firing does)."""
        with self._lock:
            self._stats.ticks += 1
        for _ in range(self.consumers):
            thread = threading.Thread(target=self._invoke_once, name="scheduled-drain", daemon=True)
            thread.start()

    def _run(self) -> None:
        # The first tick comes at once, like a rule whose period starts now.
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.tick_s)

    def _invoke_once(self) -> None:
        event = scheduled_event(self.rule_arn, self.region)
        with self._lock:
            self._stats.invocations += 1
            self._stats.running += 1
        try:
            result = self.invoke(event)
        except ThrottledError:
            with self._lock:
                self._stats.throttled += 1
            return
        except AwsError as exc:
            with self._lock:
                self._stats.errors += 1
                self._stats.last_error = str(exc)
            return
        finally:
            with self._lock:
                self._stats.running -= 1
        with self._lock:
            if result.function_error:
                self._stats.errors += 1
                self._stats.last_error = str(result.payload)[:500]
            else:
                self._stats.completed += 1
                self._stats.recent_reports.append(result.payload)
