"""The AWS resources a deployment makes, made the same way on the local servers.

``create_queues`` builds the FIFO queue and its FIFO dead-letter queue with the attributes
infra/ gives them on AWS (visibility timeout, retention, redrive after max_receive_count,
DLQ retention), ``create_lane_queues`` the same pair for every lane (each from its lane's
``queue`` settings: ``<queue.name>-<lane>.fifo`` and ``<queue.name>-<lane>-dlq.fifo``);
``create_db_secret`` stores the database credentials in Secrets Manager in the shape RDS
uses, so the worker reads them locally exactly as it does on AWS;
``create_vendor_secret`` stores the stand-in vendor API's token the same way;
``create_flows`` makes each workflow lane's topics and its state machine from the lane's
definition file, its placeholders substituted as CloudFormation's DefinitionSubstitutions does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sluice.asl import DefinitionError, load_definition, substitute
from sluice.db import DbCredentials
from sluice.settings import STEP_FUNCTION_PLACEHOLDER, Lane, QueueSettings, Settings

# moto does not check roles; a state machine still needs one named.
LOCAL_FLOW_ROLE = "arn:aws:iam::123456789012:role/sluice-local-flow"


class ResourceError(RuntimeError):
    """A queue or secret could not be created on the local servers."""


@dataclass(frozen=True)
class QueueUrls:
    url: str
    arn: str
    dlq_url: str
    dlq_arn: str


def queue_attributes(settings: Settings | QueueSettings, dlq_arn: str) -> dict[str, str]:
    q = settings.queue if isinstance(settings, Settings) else settings
    return {
        "FifoQueue": "true",
        "VisibilityTimeout": str(q.visibility_s),
        "MessageRetentionPeriod": str(q.retention_s),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": q.max_receive_count}),
    }


def dlq_attributes(settings: Settings | QueueSettings) -> dict[str, str]:
    q = settings.queue if isinstance(settings, Settings) else settings
    return {"FifoQueue": "true", "MessageRetentionPeriod": str(q.dlq_retention_days * 86400)}


def create_queues(sqs_client: Any, settings: Settings | QueueSettings) -> QueueUrls:
    """Create (or find, idempotently) the FIFO queue and its FIFO DLQ named by ``settings.queue``
    (or by one lane's resolved queue settings)."""
    q = settings.queue if isinstance(settings, Settings) else settings
    try:
        dlq_url = _create(sqs_client, q.dlq_fifo_name, dlq_attributes(q))
        dlq_arn = _arn(sqs_client, dlq_url)
        url = _create(sqs_client, q.fifo_name, queue_attributes(q, dlq_arn))
        return QueueUrls(url=url, arn=_arn(sqs_client, url), dlq_url=dlq_url, dlq_arn=dlq_arn)
    except (ClientError, BotoCoreError) as exc:
        raise ResourceError(f"cannot create the queues {q.fifo_name} / {q.dlq_fifo_name}: {exc}") from exc


@dataclass(frozen=True)
class FlowResources:
    machine_arn: str
    topics: dict[str, str]  # flow topic name (Notify) -> its ARN


def create_flows(sfn_client: Any, sns_client: Any, settings: Settings,
                 step_function_arn: Callable[[Lane], str]) -> dict[str, FlowResources]:
    """Every workflow lane's topics and state machine, by lane name (none for worker lanes). A
    machine left by an earlier run of the stack gets this run's definition."""
    made: dict[str, FlowResources] = {}
    for lane in settings.resolved_lanes():
        if lane.flow is None:
            continue
        name = settings.state_machine_name(lane)
        try:
            topics = {topic: str(sns_client.create_topic(Name=settings.topic_name(lane, topic))["TopicArn"])
                      for topic in lane.flow.topics}
            values = {STEP_FUNCTION_PLACEHOLDER: step_function_arn(lane),
                      **{f"{topic}TopicArn": arn for topic, arn in topics.items()}}
            definition = json.dumps(substitute(load_definition(lane.flow.path), values))
            existing = {m["name"]: m["stateMachineArn"] for m in sfn_client.list_state_machines()["stateMachines"]}
            if name in existing:
                sfn_client.update_state_machine(stateMachineArn=existing[name], definition=definition)
                arn = existing[name]
            else:
                arn = sfn_client.create_state_machine(name=name, definition=definition,
                                                      roleArn=LOCAL_FLOW_ROLE)["stateMachineArn"]
        except DefinitionError as exc:
            raise ResourceError(f"lane {lane.name}: {exc}") from exc
        except (ClientError, BotoCoreError) as exc:
            raise ResourceError(f"cannot create lane {lane.name}'s state machine {name}: {exc}") from exc
        made[lane.name] = FlowResources(str(arn), topics)
    return made


def create_lane_queues(sqs_client: Any, settings: Settings) -> dict[str, QueueUrls]:
    """Every lane's queue and DLQ, by lane name, in routing order (a config without lanes: its
    one lane, ``default``, with today's names)."""
    return {lane.name: create_queues(sqs_client, lane.queue) for lane in settings.resolved_lanes()}


def _create(sqs_client: Any, name: str, attributes: dict[str, str]) -> str:
    url: str = sqs_client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return url


def _arn(sqs_client: Any, url: str) -> str:
    reply = sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn: str = reply["Attributes"]["QueueArn"]
    return arn


def rds_secret(url: str) -> dict[str, Any]:
    """The JSON an RDS-managed secret holds (what Powertools' get_secret hands the worker)."""
    db = DbCredentials.from_url(url)
    return {"engine": "mariadb", "host": db.host, "port": db.port, "username": db.user,
            "password": db.password, "dbname": db.database}


def create_db_secret(secrets_client: Any, settings: Settings, database_url: str) -> str:
    """Store the database credentials under ``settings.database.secret``; returns the secret's ARN."""
    name = settings.database.secret or f"{settings.service}/{settings.stage}/database"
    return _put_secret(secrets_client, name, rds_secret(database_url), "database")


def vendor_secret_name(settings: Settings) -> str:
    return f"{settings.service}/{settings.stage}/tasks/vendor"  # the prefix the worker may read


def create_vendor_secret(secrets_client: Any, settings: Settings, token: str) -> str:
    """Store the stand-in vendor API's bearer token as ``{"token": ...}`` under
    ``<service>/<stage>/tasks/vendor``, where a vendor-calling task reads it; returns the secret's ARN."""
    return _put_secret(secrets_client, vendor_secret_name(settings), {"token": token}, "vendor")


def _put_secret(secrets_client: Any, name: str, value: dict[str, Any], what: str) -> str:
    """Create the secret, or give an existing one (a restarted stack) this value; returns its ARN."""
    text = json.dumps(value)
    try:
        try:
            arn: str = secrets_client.create_secret(Name=name, SecretString=text)["ARN"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceExistsException":
                raise
            arn = secrets_client.put_secret_value(SecretId=name, SecretString=text)["ARN"]
        return arn
    except (ClientError, BotoCoreError) as exc:
        raise ResourceError(f"cannot create the {what} secret {name!r}: {exc}") from exc
