"""Task functions the worker can run. Importing this package registers every task in it."""

from worker.tasks import invoices

__all__ = ["invoices"]
