"""The drain timeline: queue depth and workers busy, sampled while a burst drains.

DB probe latency is sampled by the probe process (bench.probe) on its own clock; the plot
puts both on one time axis (epoch seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    t: float  # epoch seconds
    visible: int  # messages waiting in the queue
    in_flight: int  # messages received and not yet deleted
    busy: int  # worker invocations running now
    cap: int


@dataclass
class TimelineSampler:
    """Calls ``read()`` every ``interval_s`` on a thread until stopped."""

    read: Callable[[], tuple[int, int, int]]  # -> (visible, in_flight, busy)
    cap: int
    interval_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TimelineSampler:
        self._thread = threading.Thread(target=self._loop, name="timeline-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                visible, in_flight, busy = self.read()
                self.samples.append(Sample(time.time(), visible, in_flight, busy, self.cap))
            except Exception as exc:  # noqa: BLE001 - a missed sample must not end the run
                self.errors.append(str(exc))
            self._stop.wait(self.interval_s)

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        return self.samples
