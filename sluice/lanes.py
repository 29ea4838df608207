"""Lanes at run time (DESIGN.md section 11): how the enqueuer routes each item to one lane.

A lane is a queue with its own DLQ, consumer, worker, cap and rate. The enqueuer knows every
lane's route from ``SLUICE_LANES`` (written by ``Settings.lanes_env`` locally and by
serverless.yml on AWS): its name, the tasks it carries, its ``match`` on payload fields, its
queue URL, its shard count and its send rate. An item goes to the FIRST lane whose tasks hold
its task and whose match fits; an item no lane takes is refused with the reason. A config
without lanes has one lane carrying every task (``SLUICE_LANES`` empty).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.runtime import DEFAULT_GROUPS, DEFAULT_LANE, SettingsError

__all__ = ["DEFAULT_LANE", "LaneRoute", "lane_takes", "route", "routes_from_env", "single_lane", "why_unroutable"]


def lane_takes(tasks: Sequence[str] | None, match: Mapping[str, Sequence[Any]], task: str, payload: Any) -> bool:
    """Does a lane with these ``tasks`` and ``match`` carry an item of ``task`` with ``payload``?"""
    if tasks is not None and task not in tasks:
        return False
    for path, allowed in match.items():
        value: Any = {"payload": payload}
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return False
            value = value[part]
        # bool is an int in Python: True must not match 1
        if not any(type(value) is type(a) and value == a for a in allowed):
            return False
    return True


@dataclass(frozen=True)
class LaneRoute:
    name: str
    tasks: tuple[str, ...] | None  # None: every task
    match: Mapping[str, tuple[Any, ...]]
    queue_url: str
    groups: int = DEFAULT_GROUPS
    max_tps: float = 300

    def takes(self, task: str, payload: Any) -> bool:
        return lane_takes(self.tasks, self.match, task, payload)

    def describe(self) -> str:
        conditions = [f"{path} in {list(values)!r}" if len(values) > 1 else f"{path} = {values[0]!r}"
                      for path, values in self.match.items()]
        return f"{self.name} ({' and '.join(conditions)})" if conditions else self.name


def single_lane(queue_url: str, groups: int = DEFAULT_GROUPS, max_tps: float = 300) -> LaneRoute:
    """The one lane of a config without lanes: every task, one queue."""
    return LaneRoute(DEFAULT_LANE, None, {}, queue_url, groups, max_tps)


def routes_from_env(value: str) -> list[LaneRoute]:
    """Parse SLUICE_LANES; raises SettingsError naming what is wrong."""
    try:
        raw = json.loads(value)
        if not isinstance(raw, list) or not raw:
            raise ValueError("expected a non-empty JSON list")
        return [LaneRoute(name=str(r["name"]),
                          tasks=None if r.get("tasks") is None else tuple(str(t) for t in r["tasks"]),
                          match={str(k): tuple(v) for k, v in (r.get("match") or {}).items()},
                          queue_url=str(r["queue_url"]), groups=int(r.get("groups", DEFAULT_GROUPS)),
                          max_tps=float(r.get("max_tps", 300)))
                for r in raw]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SettingsError(f"SLUICE_LANES is not a list of lane routes: {exc}") from None


def route(routes: Sequence[LaneRoute], task: str, payload: Any) -> LaneRoute | None:
    """The first lane that takes the item, or None."""
    return next((lane for lane in routes if lane.takes(task, payload)), None)


def why_unroutable(routes: Sequence[LaneRoute], task: str) -> str:
    """The reason an item of ``task`` found no lane, naming the lanes that carry the task."""
    carrying = [lane for lane in routes if lane.tasks is None or task in lane.tasks]
    if not carrying:
        return f"no lane carries task {task!r} (lanes: {', '.join(lane.name for lane in routes)})"
    return (f"no lane takes this {task!r} item: its payload fits none of "
            f"{'; '.join(lane.describe() for lane in carrying)}")
