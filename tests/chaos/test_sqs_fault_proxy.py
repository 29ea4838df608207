"""The fault-injecting SQS proxy breaks exactly what it is told to, in shapes botocore understands."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sluice_tools.chaos.queues import ChaosQueues, make_queues
from sluice_tools.chaos.sqs_fault_proxy import FaultPlan, FaultProxyError, SqsFaultProxy

pytestmark = pytest.mark.chaos


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[SqsFaultProxy]:
    with SqsFaultProxy(moto_endpoint, seed=7) as running:
        yield running


@pytest.fixture
def queues(moto_endpoint: str) -> ChaosQueues:
    return make_queues(moto_endpoint)


def sqs_via(url: str, attempts: int = 1) -> object:
    # total_max_attempts counts calls (max_attempts would count retries).
    return boto3.client("sqs", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"total_max_attempts": attempts, "mode": "standard"}))


def depth(queues: ChaosQueues) -> int:
    return sum(queues.depth())


def entries(n: int, prefix: str = "m") -> list[dict[str, str]]:
    return [{"Id": f"{i}", "MessageBody": f"{prefix}{i}", "MessageGroupId": "g",
             "MessageDeduplicationId": f"{prefix}{i}"} for i in range(n)]


def test_clean_plan_forwards_every_call(proxy: SqsFaultProxy, queues: ChaosQueues) -> None:
    # GIVEN a proxy with a fault rate of 0
    sqs = sqs_via(proxy.url)
    # WHEN a batch is sent and received through it
    reply = sqs.send_message_batch(QueueUrl=queues.url, Entries=entries(3))  # type: ignore[attr-defined]
    got = sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=10)  # type: ignore[attr-defined]
    # THEN the upstream queue holds the messages and nothing was injected
    assert len(reply["Successful"]) == 3
    assert got["Messages"][0]["Body"] == "m0"
    assert proxy.injected() == 0
    assert proxy.counts["SendMessageBatch:forwarded"] == 1


@pytest.mark.parametrize(("kind", "status", "code"), [("throttle", 400, "RequestThrottled"),
                                                      ("server_error", 500, "InternalFailure"),
                                                      ("unavailable", 503, "ServiceUnavailable")])
def test_fault_before_forwarding_has_no_effect(proxy: SqsFaultProxy, queues: ChaosQueues,
                                               kind: str, status: int, code: str) -> None:
    # GIVEN every SendMessageBatch fails before it reaches the server
    proxy.set_plan(FaultPlan(rate=1.0, kinds=(kind,), after_forward_share=0.0))
    # WHEN a client without retries sends a batch
    with pytest.raises(ClientError) as caught:
        sqs_via(proxy.url).send_message_batch(QueueUrl=queues.url, Entries=entries(2))  # type: ignore[attr-defined]
    # THEN it sees SQS's error code and status, and the queue is unchanged
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert depth(queues) == 0


def test_fault_after_forwarding_took_effect(proxy: SqsFaultProxy, queues: ChaosQueues) -> None:
    # GIVEN every SendMessageBatch reaches the server but its reply is replaced by a 500
    proxy.set_plan(FaultPlan(rate=1.0, kinds=("server_error",), after_forward_share=1.0))
    # WHEN a client sends a batch
    with pytest.raises(ClientError):
        sqs_via(proxy.url).send_message_batch(QueueUrl=queues.url, Entries=entries(2))  # type: ignore[attr-defined]
    # THEN the caller was told it failed although the messages are in the queue (the hard case)
    assert depth(queues) == 2
    assert proxy.counts["SendMessageBatch:server_error:after"] == 1


def test_only_the_named_operations_fail(proxy: SqsFaultProxy, queues: ChaosQueues) -> None:
    # GIVEN faults on DeleteMessage only
    proxy.set_plan(FaultPlan(rate=1.0, operations=("DeleteMessage",), kinds=("throttle",),
                             after_forward_share=0))
    sqs = sqs_via(proxy.url)
    # WHEN a message is sent, received and deleted
    sqs.send_message_batch(QueueUrl=queues.url, Entries=entries(1))  # type: ignore[attr-defined]
    message = sqs.receive_message(QueueUrl=queues.url)["Messages"][0]  # type: ignore[attr-defined]
    # THEN send and receive passed, the delete failed
    with pytest.raises(ClientError):
        sqs.delete_message(QueueUrl=queues.url, ReceiptHandle=message["ReceiptHandle"])  # type: ignore[attr-defined]
    assert proxy.injected(["DeleteMessage"]) == 1
    assert proxy.injected(["SendMessageBatch", "ReceiveMessage"]) == 0


def test_botocore_retries_ride_through_a_moderate_rate(proxy: SqsFaultProxy, queues: ChaosQueues) -> None:
    # GIVEN a third of all sends fail (either side of the server)
    proxy.set_plan(FaultPlan(rate=0.33))
    sqs = sqs_via(proxy.url, attempts=8)
    # WHEN 20 batches of distinct messages go through a retrying client
    for n in range(20):
        sqs.send_message_batch(QueueUrl=queues.url, Entries=entries(5, prefix=f"b{n}-"))  # type: ignore[attr-defined]
    # THEN faults were injected, and FIFO dedup kept every retried batch to one copy
    assert proxy.injected() > 0
    assert depth(queues) == 100


def test_every_nth_call_fails(proxy: SqsFaultProxy, queues: ChaosQueues) -> None:
    # GIVEN every 3rd SendMessageBatch fails before reaching the server
    proxy.set_plan(FaultPlan(every=3, operations=("SendMessageBatch",), after_forward_share=0.0))
    sqs = sqs_via(proxy.url)
    outcomes = []
    # WHEN six batches are sent without retries
    for n in range(6):
        try:
            sqs.send_message_batch(QueueUrl=queues.url, Entries=entries(1, prefix=f"e{n}-"))  # type: ignore[attr-defined]
            outcomes.append("ok")
        except ClientError:
            outcomes.append("failed")
    # THEN exactly the 3rd and 6th failed
    assert outcomes == ["ok", "ok", "failed", "ok", "ok", "failed"]
    assert depth(queues) == 4


def _delete_in_thread(sqs: Any, url: str, handle: str) -> tuple[threading.Thread, list[str]]:
    outcome: list[str] = []

    def delete() -> None:
        try:
            sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": "0", "ReceiptHandle": handle}])
            outcome.append("ok")
        except ClientError as exc:
            outcome.append(exc.response["Error"]["Code"])

    thread = threading.Thread(target=delete, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize(("forward", "expected", "left"), [(False, "ServiceUnavailable", 1), (True, "ok", 0)])
def test_a_hold_keeps_the_call_until_released(proxy: SqsFaultProxy, queues: ChaosQueues, moto_endpoint: str,
                                              forward: bool, expected: str, left: int) -> None:
    # GIVEN deletes on one queue held, and a message received from it, and another queue beside it
    hold = proxy.hold(["DeleteMessage", "DeleteMessageBatch"], queues.url)
    other = make_queues(moto_endpoint)
    sqs = sqs_via(proxy.url)
    for queue in (queues, other):
        sqs.send_message_batch(QueueUrl=queue.url, Entries=entries(1))  # type: ignore[attr-defined]
    handle = sqs.receive_message(QueueUrl=queues.url)["Messages"][0]["ReceiptHandle"]  # type: ignore[attr-defined]
    # WHEN a client deletes it
    thread, outcome = _delete_in_thread(sqs, queues.url, handle)
    # THEN the call waits in the proxy (the other queue's delete passes meanwhile) ...
    assert hold.reached.wait(10)
    other_handle = sqs.receive_message(QueueUrl=other.url)["Messages"][0]["ReceiptHandle"]  # type: ignore[attr-defined]
    sqs.delete_message(QueueUrl=other.url, ReceiptHandle=other_handle)  # type: ignore[attr-defined]
    assert depth(other) == 0
    assert outcome == [] and (hold.calls, hold.messages) == (1, 1)
    # ... until the release drops it (no effect) or forwards it
    hold.release(forward=forward)
    thread.join(10)
    assert outcome == [expected]
    assert depth(queues) == left
    # AND later calls pass untouched
    sqs.delete_message(QueueUrl=queues.url, ReceiptHandle=handle)  # type: ignore[attr-defined]
    assert depth(queues) == 0


def test_only_sqs_operations_on_the_path_can_be_held(proxy: SqsFaultProxy, queues: ChaosQueues) -> None:
    # GIVEN / WHEN / THEN a hold on an operation the proxy does not know is refused with a reason
    with pytest.raises(FaultProxyError, match="cannot hold"):
        proxy.hold(["PurgeQueue"], queues.url)


def test_bad_plans_are_refused(moto_endpoint: str) -> None:
    # GIVEN / WHEN / THEN impossible settings fail with a reason, before anything listens
    with pytest.raises(FaultProxyError, match="within 0..1"):
        SqsFaultProxy(moto_endpoint, FaultPlan(rate=1.5))
    with pytest.raises(FaultProxyError, match="unknown"):
        SqsFaultProxy(moto_endpoint, FaultPlan(kinds=("gremlins",)))
    with pytest.raises(FaultProxyError, match="http://"):
        SqsFaultProxy("ftp://example")
