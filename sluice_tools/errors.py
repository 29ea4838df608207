"""The tooling's user-facing error and exit codes, apart from the CLI package so that the
modules the CLI commands use (stage resolution, status) can raise them without importing
the command modules themselves."""

from __future__ import annotations

# Exit codes that mean something to scripts.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (unsafe config, invariant broken, ...)
EXIT_USAGE = 2  # bad arguments or input (typer uses 2 too)
EXIT_UNAVAILABLE = 3  # a service (SQS, Lambda, database, local stack) could not be reached


class CliError(Exception):
    """A user-facing failure: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code
