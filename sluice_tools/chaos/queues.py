"""A FIFO queue and its FIFO DLQ on any SQS endpoint, named uniquely, for chaos runs."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import boto3

from sluice.aws import Queue
from sluice_tools.ops.status import queue_counts


@dataclass(frozen=True)
class ChaosQueues:
    url: str
    dlq_url: str
    sqs: Any

    def depth(self, url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) of the queue (or ``url``)."""
        counts = queue_counts(Queue(url or self.url, sqs=self.sqs))
        return counts.visible, counts.in_flight


def make_queues(endpoint: str, *, visibility_s: int = 30, max_receive_count: int = 5,
                region: str = "us-east-1") -> ChaosQueues:
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region)
    name = f"chaos{uuid.uuid4().hex[:10]}"
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]
    dlq_arn = dlq_arn["QueueArn"]
    url = sqs.create_queue(
        QueueName=f"{name}.fifo",
        Attributes={
            "FifoQueue": "true",
            "VisibilityTimeout": str(visibility_s),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": str(max_receive_count)}),
        },
    )["QueueUrl"]
    return ChaosQueues(url=url, dlq_url=dlq_url, sqs=sqs)
