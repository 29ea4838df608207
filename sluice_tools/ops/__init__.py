"""Operator logic behind `sluice status | dlq | plan | send | drain`: plain Python, no CLI code."""
