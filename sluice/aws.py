"""Every SQS and Lambda call sluice makes, in one place.

The rest of the code speaks of queues, batches and invocations; this module turns those
into boto3 calls and AWS errors into sluice's own exceptions. Clients are made lazily and
reused (one per process), and they honour AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL_LAMBDA,
so the same code talks to AWS, moto, fauxqs or the local Lambda endpoint.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# Throttling and 5xx are retried by botocore itself (standard mode); what still fails
# reaches the caller as AwsError or a per-entry failure.
_CLIENT_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=50)
_clients: dict[tuple[str, int | None], Any] = {}
_clients_lock = threading.Lock()


class AwsError(Exception):
    """An AWS call failed after botocore's retries."""


class ThrottledError(AwsError):
    """Lambda said TooManyRequestsException (429): the function's concurrency is used up."""


def client(service: str, read_timeout: int | None = None) -> Any:
    """One boto3 client per service (and read timeout) per process; thread-safe to share."""
    key = (service, read_timeout)
    with _clients_lock:
        if key not in _clients:
            config = _CLIENT_CONFIG
            if read_timeout is not None:
                # A synchronous invoke waits as long as the function may run; no retries, because
                # a retried RequestResponse invoke would run the worker twice. botocore's
                # "max_attempts" counts retries (1 = two calls); "total_max_attempts" counts calls.
                config = config.merge(Config(read_timeout=read_timeout,
                                             retries={"total_max_attempts": 1, "mode": "standard"}))
            _clients[key] = boto3.client(service, config=config)
        return _clients[key]


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints between sessions)."""
    with _clients_lock:
        _clients.clear()


@dataclass(frozen=True)
class OutgoingMessage:
    id: str  # batch entry id, unique within one batch call
    body: str
    group_id: str
    dedup_id: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SentMessage:
    id: str
    message_id: str
    sequence_number: str


@dataclass(frozen=True)
class FailedEntry:
    id: str
    code: str
    message: str
    sender_fault: bool


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    group_id: str
    receive_count: int
    sent_timestamp_ms: int
    attributes: dict[str, str]
    message_attributes: dict[str, Any]

    def to_sqs_record(self, queue_arn: str) -> dict[str, Any]:
        """The record shape of an SQS Lambda event, so the worker runs behind either trigger."""
        attributes = dict(self.attributes)
        attributes.setdefault("ApproximateReceiveCount", str(self.receive_count))
        attributes.setdefault("MessageGroupId", self.group_id)
        return {
            "messageId": self.message_id,
            "receiptHandle": self.receipt_handle,
            "body": self.body,
            "attributes": attributes,
            "messageAttributes": {
                name: {
                    "stringValue": value.get("StringValue"),
                    "dataType": value.get("DataType", "String"),
                    "stringListValues": [],
                    "binaryListValues": [],
                }
                for name, value in self.message_attributes.items()
            },
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": queue_arn.split(":")[3] if queue_arn.count(":") >= 5 else "",
        }


class Queue:
    """One SQS FIFO queue, addressed by URL."""

    def __init__(self, url: str, sqs: Any | None = None) -> None:
        if not url:
            raise AwsError("no queue URL configured (SLUICE_QUEUE_URL / SLUICE_DLQ_URL)")
        self.url = url
        self._sqs = sqs

    @property
    def sqs(self) -> Any:
        return self._sqs or client("sqs")

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = getattr(self.sqs, operation)(QueueUrl=self.url, **kwargs)
            return result
        except (ClientError, BotoCoreError) as exc:
            raise AwsError(f"SQS {operation} on {self.url} failed: {exc}") from exc

    @property
    def arn(self) -> str:
        return self.attributes(["QueueArn"]).get("QueueArn", "")

    def attributes(self, names: Sequence[str] = ("All",)) -> dict[str, str]:
        attributes: dict[str, str] = self._call("get_queue_attributes", AttributeNames=list(names)).get(
            "Attributes", {}
        )
        return attributes

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> tuple[list[SentMessage], list[FailedEntry]]:
        """One SendMessageBatch (<= 10 entries). Returns what SQS took and what it refused, per entry."""
        entries = []
        for m in messages:
            entry: dict[str, Any] = {
                "Id": m.id,
                "MessageBody": m.body,
                "MessageGroupId": m.group_id,
                "MessageDeduplicationId": m.dedup_id,
            }
            if m.attributes:
                entry["MessageAttributes"] = {
                    k: {"DataType": "String", "StringValue": v} for k, v in m.attributes.items()
                }
            entries.append(entry)
        reply = self._call("send_message_batch", Entries=entries)
        sent = [
            SentMessage(id=s["Id"], message_id=s["MessageId"], sequence_number=s.get("SequenceNumber", ""))
            for s in reply.get("Successful", [])
        ]
        failed = [
            FailedEntry(id=f["Id"], code=f.get("Code", ""), message=f.get("Message", ""),
                        sender_fault=bool(f.get("SenderFault")))
            for f in reply.get("Failed", [])
        ]
        return sent, failed

    def send(self, message: OutgoingMessage) -> SentMessage:
        sent, failed = self.send_batch([message])
        if failed:
            raise AwsError(f"SQS refused message {message.id}: {failed[0].code} {failed[0].message}")
        return sent[0]

    def receive(self, max_messages: int = 10, wait_s: int = 0, visibility_s: int | None = None
                ) -> list[ReceivedMessage]:
        kwargs: dict[str, Any] = {
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_s,
            "MessageSystemAttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }
        if visibility_s is not None:
            kwargs["VisibilityTimeout"] = visibility_s
        reply = self._call("receive_message", **kwargs)
        return [
            ReceivedMessage(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m.get("Body", ""),
                group_id=m.get("Attributes", {}).get("MessageGroupId", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                sent_timestamp_ms=int(m.get("Attributes", {}).get("SentTimestamp", "0")),
                attributes=m.get("Attributes", {}),
                message_attributes=m.get("MessageAttributes", {}),
            )
            for m in reply.get("Messages", [])
        ]

    def delete(self, receipt_handle: str) -> None:
        self._call("delete_message", ReceiptHandle=receipt_handle)

    def delete_batch(self, receipt_handles: Sequence[str]) -> list[str]:
        """DeleteMessageBatch in tens; returns the handles SQS refused (the rest are deleted)."""
        return self._in_tens("delete_message_batch", receipt_handles, {})

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        self._call("change_message_visibility", ReceiptHandle=receipt_handle, VisibilityTimeout=seconds)

    def release(self, receipt_handles: Iterable[str]) -> list[str]:
        """Make messages visible again at once; returns the handles SQS refused."""
        return self._in_tens("change_message_visibility_batch", receipt_handles, {"VisibilityTimeout": 0})

    def _in_tens(self, operation: str, receipt_handles: Iterable[str], extra: dict[str, Any]) -> list[str]:
        """One batch operation on many receipt handles, ten per call (SQS's batch limit);
        returns the handles SQS refused."""
        handles = list(receipt_handles)
        refused: list[str] = []
        for start in range(0, len(handles), 10):
            chunk = handles[start:start + 10]
            reply = self._call(
                operation, Entries=[{"Id": str(i), "ReceiptHandle": h, **extra} for i, h in enumerate(chunk)]
            )
            refused += [chunk[int(f["Id"])] for f in reply.get("Failed", [])]
        return refused

    def purge(self) -> None:
        self._call("purge_queue")

    def tags(self) -> dict[str, str]:
        """The queue's tags (ListQueueTags)."""
        tags: dict[str, str] = self._call("list_queue_tags").get("Tags", {})
        return tags

    def tag(self, tags: dict[str, str]) -> None:
        """Add or overwrite these tags (TagQueue); the queue's other tags stay as they are."""
        self._call("tag_queue", Tags=tags)


@dataclass(frozen=True)
class InvokeResult:
    status_code: int
    payload: Any
    function_error: str | None  # "Unhandled" when the function raised or timed out
    duration_ms: float


class FunctionInvoker:
    """Synchronous (RequestResponse) and async (Event) Lambda invokes of one function."""

    def __init__(self, function_name: str, timeout_s: int, lambda_client: Any | None = None) -> None:
        self.function_name = function_name
        # The read timeout outlasts the function's own timeout so Lambda reports it, not us.
        self._client = lambda_client
        self._read_timeout = timeout_s + 10

    @property
    def lam(self) -> Any:
        return self._client or client("lambda", read_timeout=self._read_timeout)

    def invoke(self, payload: Any, *, asynchronous: bool = False) -> InvokeResult:
        import time

        started = time.monotonic()
        try:
            reply = self.lam.invoke(
                FunctionName=self.function_name,
                InvocationType="Event" if asynchronous else "RequestResponse",
                Payload=json.dumps(payload).encode(),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "TooManyRequestsException" or status == 429:
                raise ThrottledError(f"{self.function_name} is throttled: {exc}") from exc
            raise AwsError(f"invoke of {self.function_name} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise AwsError(f"invoke of {self.function_name} failed: {exc}") from exc
        raw = reply["Payload"].read() if "Payload" in reply else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        return InvokeResult(
            status_code=reply.get("StatusCode", 0),
            payload=body,
            function_error=reply.get("FunctionError"),
            duration_ms=(time.monotonic() - started) * 1000,
        )
