"""Fault injection for the reliability suite (tests/chaos): nothing here runs in a Lambda."""
