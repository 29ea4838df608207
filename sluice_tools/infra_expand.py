"""serverless.yml's functions and per-lane resources, expanded from config/<stage>.yml.

serverless variables cannot loop over lanes, and resolving lanes a second time in JavaScript
would duplicate ``Settings.resolved_lanes()``; so infra/derived.js runs this module and
serverless.yml takes ``functions:`` and the lanes' queues, alarms and function extensions from
its JSON (docs/adr/0006-lane-expansion.md):

    python -m sluice_tools.infra_expand --stage dev --part functions|resources [--root DIR]

A config without lanes expands to today's logical ids (JobsQueue, DeadLetterQueue,
ConsumerLambdaFunction, WorkerLambdaFunction, ...), so existing stacks are not replaced; a
lane's resources carry its name (LedgerJobsQueue, ConsumerDashledgerLambdaFunction, ...).

Values that stay the same for every lane (the database secret, the alarm target, the VPC
attachment, checkov's justified skips) are emitted as the serverless variables that define them
once, and the framework resolves them in the returned JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sluice.settings import Lane, Settings, SettingsError, load_settings
from sluice_tools.functions import function_table

Node = Any  # a CloudFormation / serverless fragment: dicts, lists, strings, numbers

SECRET_ARN = "${self:custom.databaseSecretArn}"
ALARM_TARGET = "${self:custom.alarmTarget}"
XRAY = "${file(infra/iam.yml):xray}"
# The justified checkov skips of each kind of lane resource, written once in infra/lane-skips.yml.
SKIPS = "${file(infra/lane-skips.yml):%s}"


def normalized(name: str) -> str:
    """A name as the framework spells it in logical ids: ``consumer-vendor-a`` -> ``ConsumerDashvendorDasha``."""
    name = name.replace("-", "Dash").replace("_", "Underscore")
    return name[:1].upper() + name[1:]


def function_id(key: str) -> str:
    """The logical id the framework gives the function with serverless.yml key ``key``."""
    return f"{normalized(key)}LambdaFunction"


def lane_prefix(lane: Lane) -> str:
    """What a lane's logical ids start with: nothing for the one lane of a config without lanes."""
    return "" if lane.implicit else normalized(lane.name)


def queue_id(lane: Lane) -> str:
    return f"{lane_prefix(lane)}JobsQueue"


def dlq_id(lane: Lane) -> str:
    return f"{lane_prefix(lane)}DeadLetterQueue"


def _arn(logical_id: str) -> Node:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def _allow(actions: list[str], resource: Node) -> Node:
    return {"Effect": "Allow", "Action": actions, "Resource": resource}


def lanes_env_value(settings: Settings) -> Node:
    """SLUICE_LANES for the enqueuer: ``Settings.lanes_env`` with each lane's queue URL a Ref.

    The JSON is written by Settings and cut at placeholder URLs, so the deployed value is exactly
    what the local stack gets; Fn::Join (not Fn::Sub) because "${" would read as a serverless
    variable."""
    lanes = settings.resolved_lanes()
    marks = {lane.name: f"@@queue-url:{lane.name}@@" for lane in lanes}
    text = settings.lanes_env(marks)
    if not text:
        return ""
    parts: list[Node] = []
    for lane in lanes:
        before, text = text.split(marks[lane.name], 1)
        parts += [before, {"Ref": queue_id(lane)}]
    parts.append(text)
    return {"Fn::Join": ["", parts]}


def _environment(settings: Settings, lane: Lane | None, routes: Node = "") -> dict[str, Node]:
    """``Settings.runtime_env`` with the stack's resources as references. ``lane`` None: a
    stage-wide function (enqueuer, migrate) of a config with lanes, tied to no lane's queue."""
    if lane is None:
        env: dict[str, Node] = dict(settings.runtime_env(queue_url="", dlq_url="", worker_function=""))
        env["SLUICE_LANE"] = ""
    else:
        env = dict(settings.runtime_env(queue_url="", dlq_url="", worker_function=settings.function_name(
            lane.function_key("worker")), lane=lane))
        env["SLUICE_QUEUE_URL"] = {"Ref": queue_id(lane)}
        env["SLUICE_DLQ_URL"] = {"Ref": dlq_id(lane)}
        env["SLUICE_QUEUE_ARN"] = _arn(queue_id(lane))
    env["SLUICE_LANES"] = routes
    env["SLUICE_DB_SECRET_ID"] = SECRET_ARN
    return env


def functions(settings: Settings) -> dict[str, Node]:
    """serverless.yml's ``functions:``, one entry per key of the function table."""
    table = function_table(settings)
    lanes = settings.resolved_lanes()
    single = lanes[0] if lanes[0].implicit else None
    out: dict[str, Node] = {}

    enqueuer = table["enqueuer"]
    out["enqueuer"] = {
        "handler": enqueuer.handler,
        "timeout": enqueuer.timeout_s,
        "memorySize": enqueuer.memory_mb,
        "events": "${self:custom.enqueuerEvents.${self:custom.cfg.api.auth}}",
        "environment": _environment(settings, single, lanes_env_value(settings)),
        # SendMessage also authorizes SendMessageBatch; the enqueuer routes into every lane's queue.
        "iamRoleStatements": [_allow(["sqs:SendMessage"], _arn(queue_id(lane))) for lane in lanes] + [XRAY],
    }
    for lane in lanes:
        consumer, worker = table[lane.function_key("consumer")], table[lane.function_key("worker")]
        out[consumer.key] = {
            "handler": consumer.handler,
            "timeout": consumer.timeout_s,
            "memorySize": consumer.memory_mb,
            # = consumers: a tick that finds the previous drain still running is throttled instead
            # of piling a second drain on top of it.
            "reservedConcurrency": consumer.reserved_concurrency,
            # EventBridge invokes asynchronously, and Lambda keeps retrying a throttled async event
            # for up to 6 hours: throttled ticks would queue up behind the running drain and start
            # back to back. Dropped after a minute (the shortest age Lambda allows) instead, and a
            # failed drain is not retried: its messages come back after the visibility timeout.
            "maximumEventAge": 60,
            "maximumRetryAttempts": 0,
            # One schedule per consumer, so each tick starts drain.consumers drains.
            "events": [{"schedule": {"rate": [lane.drain.schedule]}} for _ in range(lane.drain.consumers)],
            "environment": _environment(settings, lane),
            "iamRoleStatements": [
                _allow(["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility"], _arn(queue_id(lane))),
                # The adaptive limit's saved state is a tag on the lane's own queue (ADR 0004).
                _allow(["sqs:ListQueueTags", "sqs:TagQueue"], _arn(queue_id(lane))),
                _allow(["lambda:InvokeFunction"], _arn(function_id(worker.key))),
                XRAY,
            ],
        }
        out[worker.key] = {
            "handler": worker.handler,
            "timeout": worker.timeout_s,
            "memorySize": worker.memory_mb,
            # = the lane's cap: what holds it when a worker outlives its drain.
            "reservedConcurrency": worker.reserved_concurrency,
            "environment": _environment(settings, lane),
            "iamRoleStatements": [
                _allow(["sqs:DeleteMessage", "sqs:ChangeMessageVisibility"], _arn(queue_id(lane))),
                _allow(["sqs:SendMessage"], _arn(dlq_id(lane))),
                _allow(["secretsmanager:GetSecretValue"], SECRET_ARN),
                # The task modules' own secrets (a vendor's token), named <service>/<stage>/tasks/...
                _allow(["secretsmanager:GetSecretValue"], {"Fn::Join": ["", [
                    "arn:", {"Ref": "AWS::Partition"}, ":secretsmanager:", {"Ref": "AWS::Region"}, ":",
                    {"Ref": "AWS::AccountId"}, f":secret:{settings.service}/{settings.stage}/tasks/*"]]}),
                XRAY,
            ],
        }
    migrate = table["migrate"]
    # Runs the schema migrations where the database is reachable: `sluice db migrate --stage S`.
    out["migrate"] = {
        "handler": migrate.handler,
        "timeout": migrate.timeout_s,
        "memorySize": migrate.memory_mb,
        "reservedConcurrency": migrate.reserved_concurrency,
        "environment": _environment(settings, single),
        "iamRoleStatements": [_allow(["secretsmanager:GetSecretValue"], SECRET_ARN), XRAY],
    }
    return out


def _alarm(description: str, namespace: str, metric: str, dimension: str, value: Node, statistic: str,
           period: int, threshold: Node) -> Node:
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": {
        "AlarmDescription": description, "Namespace": namespace, "MetricName": metric,
        "Dimensions": [{"Name": dimension, "Value": value}], "Statistic": statistic, "Period": period,
        "EvaluationPeriods": 1, "Threshold": threshold, "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching", "AlarmActions": [ALARM_TARGET], "OKActions": [ALARM_TARGET]}}


def _lane_resources(settings: Settings, lane: Lane) -> tuple[dict[str, Node], dict[str, Node]]:
    """One lane's queue, DLQ and alarms, and its outputs."""
    q, p = lane.queue, lane_prefix(lane)
    consumer, worker = lane.function_key("consumer"), lane.function_key("worker")
    # "sluice dev" for the one lane, "sluice dev lane vendor-a" for a named one.
    where = f"sluice {settings.stage}" + ("" if lane.implicit else f" lane {lane.name}")
    resources = {
        # Both FIFO: a FIFO queue only redrives to a FIFO DLQ.
        dlq_id(lane): {"Type": "AWS::SQS::Queue", "Metadata": SKIPS % "queue", "Properties": {
            "QueueName": q.dlq_fifo_name, "FifoQueue": True, "SqsManagedSseEnabled": True,
            # Longer than the source's retention: a FIFO message keeps its first enqueue time.
            "MessageRetentionPeriod": q.dlq_retention_days * 86400}},
        queue_id(lane): {"Type": "AWS::SQS::Queue", "Metadata": SKIPS % "queue", "Properties": {
            "QueueName": q.fifo_name, "FifoQueue": True,
            # The enqueuer sets MessageDeduplicationId = sha256(task:key) per item.
            "ContentBasedDeduplication": False, "SqsManagedSseEnabled": True,
            "VisibilityTimeout": q.visibility_s, "MessageRetentionPeriod": q.retention_s,
            "RedrivePolicy": {"deadLetterTargetArn": _arn(dlq_id(lane)), "maxReceiveCount": q.max_receive_count}}},
        f"{p}DeadLetterQueueNotEmptyAlarm": _alarm(
            f"{where}: messages reached the dead-letter queue (see `sluice dlq list`)", "AWS/SQS",
            "ApproximateNumberOfMessagesVisible", "QueueName", {"Fn::GetAtt": [dlq_id(lane), "QueueName"]},
            "Maximum", 60, 0),
        f"{p}OldestMessageAgeAlarm": _alarm(
            f"{where}: the oldest queued message is older than alarms.oldest_message_age_s (drains fall behind)",
            "AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", {"Fn::GetAtt": [queue_id(lane), "QueueName"]},
            "Maximum", 60, settings.alarms.oldest_message_age_s),
        f"{p}ConsumerErrorsAlarm": _alarm(
            f"{where}: a consumer (drain) invocation failed", "AWS/Lambda", "Errors", "FunctionName",
            {"Ref": function_id(consumer)}, "Sum", 300, 0),
        # The consumer never dispatches above the cap, so a throttle means the cap and the
        # worker's reserved concurrency disagree, or something else invokes the worker.
        f"{p}WorkerThrottlesAlarm": _alarm(
            f"{where}: worker invocations were throttled", "AWS/Lambda", "Throttles", "FunctionName",
            {"Ref": function_id(worker)}, "Sum", 300, 0),
    }
    outputs = {
        f"{p}JobsQueueUrl": {"Value": {"Ref": queue_id(lane)}},
        f"{p}DeadLetterQueueUrl": {"Value": {"Ref": dlq_id(lane)}},
        f"{p}WorkerFunctionName": {"Value": {"Ref": function_id(worker)}},
    }
    return resources, outputs


def resources(settings: Settings) -> dict[str, Node]:
    """Every lane's resources and outputs, and the lanes' additions to the function resources
    the framework generates (checkov skips, the workers' VPC attachment, log group skips)."""
    out: dict[str, Node] = {"Resources": {}, "Outputs": {}, "extensions": {}}
    for lane in settings.resolved_lanes():
        made, outputs = _lane_resources(settings, lane)
        out["Resources"].update(made)
        out["Outputs"].update(outputs)
        consumer, worker = normalized(lane.function_key("consumer")), normalized(lane.function_key("worker"))
        out["extensions"].update({
            f"{consumer}LambdaFunction": {"Metadata": SKIPS % "consumer"},
            f"{worker}LambdaFunction": {"Properties": {"VpcConfig": "${self:custom.vpcConfig}"},
                                        "Metadata": SKIPS % "worker"},
            f"{worker}IamRoleLambdaExecution": {
                "Properties": {"ManagedPolicyArns": "${self:custom.vpcManagedPolicies}"}},
            f"{consumer}LogGroup": "${self:custom.logGroupSkips}",
            f"{worker}LogGroup": "${self:custom.logGroupSkips}",
        })
    return out


PARTS = {"functions": functions, "resources": resources}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice_tools.infra_expand", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--part", required=True, choices=sorted(PARTS))
    parser.add_argument("--root", type=Path, default=None, help="the project folder (its config/ is read)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.stage, args.root / "config" if args.root else None)
        document = PARTS[args.part](settings)
    except (SettingsError, ValueError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    json.dump(document, sys.stdout, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
