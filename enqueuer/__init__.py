"""The enqueuer Lambda: HTTP API (POST /jobs) or direct invoke -> sluice.enqueue."""
