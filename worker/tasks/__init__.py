"""The application: task modules, each with its own SQL and its migrations beside it.

Which of them a stage runs is configuration (``tasks:`` in ``config/<stage>.yml``); importing
this package registers nothing by itself.
"""
