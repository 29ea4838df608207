"""sluice: bursts of work in, a steady capped flow into a small MariaDB out."""

__version__ = "0.1.0"
