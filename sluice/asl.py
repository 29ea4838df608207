"""A workflow lane's state machine definition (Amazon States Language), read from its file.

The same file deploys and runs locally (moto's ASL interpreter), so it is checked once here:
JSON or YAML, a mapping with ``StartAt`` naming one of its ``States``. ``step_tasks`` lists
the sluice tasks its Task states run (``Parameters.task`` of a state calling the step
Lambda), so the config checks can name a step task no module registers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml


class DefinitionError(ValueError):
    """A state machine definition file is missing, unreadable or not ASL; the message says which."""


def load_definition(path: Path) -> dict[str, Any]:
    """The definition in ``path`` as a mapping (raises DefinitionError naming the file and the fault)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DefinitionError(f"the definition file {path} does not exist") from None
    except OSError as exc:
        raise DefinitionError(f"the definition file {path} cannot be read: {exc}") from None
    try:
        # YAML 1.2 is a superset of JSON, but a JSON parse first gives JSON files JSON's errors.
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise DefinitionError(f"the definition file {path} is not valid {kind}: {exc}") from None
    check_definition(data, str(path))
    return dict(data)


def check_definition(data: Any, where: str) -> None:
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{where} must hold an ASL mapping with StartAt and States")
    states = data.get("States")
    if not isinstance(states, Mapping) or not states:
        raise DefinitionError(f"{where} has no States (a mapping of state names to states)")
    start = data.get("StartAt")
    if not isinstance(start, str) or start not in states:
        raise DefinitionError(f"{where}: StartAt {start!r} is not one of its States ({', '.join(states)})")


def _states(definition: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every state, including those of Parallel branches and Map iterators."""
    for name, state in (definition.get("States") or {}).items():
        if not isinstance(state, Mapping):
            continue
        yield name, state
        for branch in state.get("Branches") or []:
            if isinstance(branch, Mapping):
                yield from _states(branch)
        for key in ("Iterator", "ItemProcessor"):
            if isinstance(state.get(key), Mapping):
                yield from _states(state[key])


def step_tasks(definition: Mapping[str, Any]) -> dict[str, str]:
    """State name -> the sluice task it runs, for every Task state whose Parameters (or
    Parameters.Payload, for ``arn:aws:states:::lambda:invoke``) name a ``task``."""
    found: dict[str, str] = {}
    for name, state in _states(definition):
        if state.get("Type") != "Task":
            continue
        parameters = state.get("Parameters")
        if isinstance(parameters, Mapping) and isinstance(parameters.get("Payload"), Mapping):
            parameters = parameters["Payload"]
        if isinstance(parameters, Mapping) and isinstance(parameters.get("task"), str):
            found[name] = parameters["task"]
    return found


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def placeholders(definition: Any) -> set[str]:
    """Every ``${Name}`` placeholder in the definition's strings."""
    if isinstance(definition, str):
        return set(_PLACEHOLDER.findall(definition))
    if isinstance(definition, Mapping):
        return set().union(*(placeholders(v) for v in definition.values())) if definition else set()
    if isinstance(definition, list):
        return set().union(*(placeholders(v) for v in definition)) if definition else set()
    return set()


def substitute(definition: Any, values: Mapping[str, str]) -> Any:
    """``${Name}`` placeholders in every string replaced by ``values[Name]``, as CloudFormation's
    DefinitionSubstitutions does at deploy time; the local stack and the tests use this. A
    placeholder without a value is a DefinitionError (a definition would fail far from here)."""
    if isinstance(definition, str):
        def value(match: re.Match[str]) -> str:
            if match.group(1) not in values:
                raise DefinitionError(f"the definition uses ${{{match.group(1)}}}, which has no value "
                                      f"(given: {', '.join(sorted(values)) or 'none'})")
            return values[match.group(1)]

        return _PLACEHOLDER.sub(value, definition)
    if isinstance(definition, Mapping):
        return {k: substitute(v, values) for k, v in definition.items()}
    if isinstance(definition, list):
        return [substitute(v, values) for v in definition]
    return definition
