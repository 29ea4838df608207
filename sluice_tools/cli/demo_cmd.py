"""`sluice demo`: the main job (see sluice_tools.demo); `make demo` runs it."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from sluice_tools.demo import main

    summary = "Start the local stack, POST a burst of invoices, watch it drain, check it."
    app.command("demo", help=summary)(main)
