"""The `sluice` command. Each group of commands lives in a module of its own here and is
registered below; a user error ends with a one-line message and a non-zero exit code,
never a traceback (see ``sluice_tools.cli.common``)."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Operate sluice: local stack, queue, DLQ, database.")

# (module, name of the typer sub-app attribute, command group name or "" for top-level commands)
_COMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("sluice_tools.cli.config_cmd", "register"),
    ("sluice_tools.cli.db_cmd", "register"),
    ("sluice_tools.cli.local_cmd", "register"),
    ("sluice_tools.cli.ops_cmd", "register"),
    ("sluice_tools.cli.dlq_cmd", "register"),
    ("sluice_tools.cli.plan_cmd", "register"),
    ("sluice_tools.cli.demo_cmd", "register"),
)

for _module, _hook in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:  # a real import error inside the module must surface
            raise
        continue
    getattr(_mod, _hook)(app)


def main() -> None:
    app()
