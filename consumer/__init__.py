"""The consumer Lambda: a scheduled tick -> sluice.drain."""
