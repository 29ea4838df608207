"""The worker function: applies SQS-event-shaped batches of work items to the database."""
