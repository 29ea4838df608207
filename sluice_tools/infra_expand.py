"""serverless.yml's functions and per-lane resources, expanded from config/<stage>.yml.

serverless variables cannot loop over lanes, and resolving lanes a second time in JavaScript
would duplicate ``Settings.resolved_lanes()``; so infra/derived.js runs this module and
serverless.yml takes ``functions:`` and the lanes' queues, alarms and function extensions from
its JSON (docs/adr/0006-lane-expansion.md):

    python -m sluice_tools.infra_expand --stage dev --part functions|resources [--root DIR]

A config without lanes expands to today's logical ids (JobsQueue, DeadLetterQueue,
ConsumerLambdaFunction, WorkerLambdaFunction, ...), so existing stacks are not replaced; a
lane's resources carry its name (LedgerJobsQueue, ConsumerDashledgerLambdaFunction, ...).

A workflow lane (``flow:``) expands to plain CloudFormation from the same lanes, not the
serverless-step-functions plugin: its state machine (the definition file with
DefinitionSubstitutions), an SNS topic per ``flow.topics``, the state machine's own role and log
group, and a ``step-<lane>`` function in place of the worker.

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

from sluice.asl import DefinitionError, load_definition
from sluice.settings import STEP_FUNCTION_PLACEHOLDER, Lane, Settings, SettingsError, load_settings
from sluice_tools.functions import function_table

Node = Any  # a CloudFormation / serverless fragment: dicts, lists, strings, numbers

SECRET_ARN = "${self:custom.databaseSecretArn}"
ALARM_TARGET = "${self:custom.alarmTarget}"
XRAY = "${file(infra/iam.yml):xray}"
# The justified checkov skips of each kind of lane resource, written once in infra/lane-skips.yml.
SKIPS = "${file(infra/lane-skips.yml):%s}"
# Where Settings.runtime_env writes SLUICE_FLOW_ARN, replaced by the state machine's Ref.
FLOW_ARN_MARK = "@@flow-arn@@"


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


def machine_id(lane: Lane) -> str:
    return f"{lane_prefix(lane)}StateMachine"


def topic_id(lane: Lane, topic: str) -> str:
    return f"{lane_prefix(lane)}{topic}Topic"


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


def _environment(settings: Settings, lane: Lane | None, routes: Node = "", *, machine: bool = False) -> dict[str, Node]:
    """``Settings.runtime_env`` with the stack's resources as references. ``lane`` None: a
    stage-wide function (enqueuer, migrate) of a config with lanes, tied to no lane's queue.
    ``machine``: SLUICE_FLOW_ARN is the Ref of the lane's state machine (its consumer's)."""
    if lane is None:
        env: dict[str, Node] = dict(settings.runtime_env(queue_url="", dlq_url="", worker_function=""))
        env["SLUICE_LANE"] = ""
    else:
        # A workflow lane's consumer invokes no function (its state machine calls the step), so it
        # names none rather than a worker that does not exist.
        worker = "" if lane.flow is not None else settings.function_name(lane.function_key("worker"))
        env = dict(settings.runtime_env(queue_url="", dlq_url="", worker_function=worker, lane=lane,
                                        flow_arn=FLOW_ARN_MARK if machine else ""))
        env["SLUICE_QUEUE_URL"] = {"Ref": queue_id(lane)}
        env["SLUICE_DLQ_URL"] = {"Ref": dlq_id(lane)}
        env["SLUICE_QUEUE_ARN"] = _arn(queue_id(lane))
        if machine:
            env["SLUICE_FLOW_ARN"] = {"Ref": machine_id(lane)}  # Ref of a state machine is its ARN
    env["SLUICE_LANES"] = routes
    env["SLUICE_DB_SECRET_ID"] = SECRET_ARN
    return env


def _stack_arn(service: str, resource: str) -> Node:
    """``arn:<partition>:<service>:<region>:<account>:<resource>`` of this stack's account and region
    (Fn::Join, not Fn::Sub: "${" would read as a serverless variable)."""
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, f":{service}:", {"Ref": "AWS::Region"}, ":",
                              {"Ref": "AWS::AccountId"}, f":{resource}"]]}


def _task_secrets(settings: Settings) -> Node:
    """The task modules' own secrets (a vendor's token), named <service>/<stage>/tasks/..."""
    return _allow(["secretsmanager:GetSecretValue"],
                  _stack_arn("secretsmanager", f"secret:{settings.service}/{settings.stage}/tasks/*"))


def _consumer_statements(settings: Settings, lane: Lane, target: str) -> list[Node]:
    """A lane's consumer: its own queue, and its worker (a worker lane) or its state machine and
    DLQ (a workflow lane: it deletes what it started, dead-letters failures, never invokes)."""
    own_queue = [
        # The adaptive limit's saved state is a tag on the lane's own queue (ADR 0004).
        _allow(["sqs:ListQueueTags", "sqs:TagQueue"], _arn(queue_id(lane))),
    ]
    if lane.flow is None:
        return [_allow(["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility"], _arn(queue_id(lane))), *own_queue,
                _allow(["lambda:InvokeFunction"], _arn(function_id(target))), XRAY]
    machine = settings.state_machine_name(lane)
    return [
        _allow(["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage"], _arn(queue_id(lane))),
        *own_queue,
        # Bodies that are no envelope, and the items of failed executions (sluice/flows.py).
        _allow(["sqs:SendMessage"], _arn(dlq_id(lane))),
        _allow(["states:StartExecution", "states:ListExecutions"], {"Ref": machine_id(lane)}),
        # The failure scan reads each failed execution's input and history: that machine's only.
        _allow(["states:DescribeExecution", "states:GetExecutionHistory"],
               _stack_arn("states", f"execution:{machine}:*")),
        XRAY,
    ]


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
        consumer, target = table[lane.function_key("consumer")], table[lane.target_key]
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
            "environment": _environment(settings, lane, machine=lane.flow is not None),
            "iamRoleStatements": _consumer_statements(settings, lane, target.key),
        }
        if lane.flow is None:
            statements = [
                _allow(["sqs:DeleteMessage", "sqs:ChangeMessageVisibility"], _arn(queue_id(lane))),
                _allow(["sqs:SendMessage"], _arn(dlq_id(lane))),
            ]
        else:
            # The step applies one task to one item and answers its state machine; it never
            # touches the queue (the consumer deleted the message when the execution started).
            statements = []
        out[target.key] = {
            "handler": target.handler,
            "timeout": target.timeout_s,
            "memorySize": target.memory_mb,
            # = the lane's cap: what holds it when a worker outlives its drain (a step function:
            # what its state machine's executions may run at once).
            "reservedConcurrency": target.reserved_concurrency,
            # Not SLUICE_FLOW_ARN for a step function: the state machine names the step's ARN, so
            # the step naming the machine's would be a dependency cycle, and it starts nothing.
            "environment": _environment(settings, lane),
            "iamRoleStatements": [
                *statements,
                _allow(["secretsmanager:GetSecretValue"], SECRET_ARN),
                _task_secrets(settings),
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
    """One lane's queue, DLQ and alarms, and its outputs (a workflow lane's machine: _flow_resources)."""
    q, p = lane.queue, lane_prefix(lane)
    consumer, target = lane.function_key("consumer"), lane.target_key
    where = _where(settings, lane)
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
    }
    if lane.flow is None:
        # The consumer never dispatches above the cap, so a throttle means the cap and the
        # worker's reserved concurrency disagree, or something else invokes the worker.
        resources[f"{p}WorkerThrottlesAlarm"] = _alarm(
            f"{where}: worker invocations were throttled", "AWS/Lambda", "Throttles", "FunctionName",
            {"Ref": function_id(target)}, "Sum", 300, 0)
    else:
        # Executions start under the cap, but each may run several steps at once (Parallel, Map)
        # or retry a step: a throttle means the step's reserved concurrency is too small for them.
        resources[f"{p}StepThrottlesAlarm"] = _alarm(
            f"{where}: step function invocations were throttled (the state machine retries them only "
            "where its definition says so)", "AWS/Lambda", "Throttles", "FunctionName",
            {"Ref": function_id(target)}, "Sum", 300, 0)
    outputs = {
        f"{p}JobsQueueUrl": {"Value": {"Ref": queue_id(lane)}},
        f"{p}DeadLetterQueueUrl": {"Value": {"Ref": dlq_id(lane)}},
        f"{p}{lane.target_role.capitalize()}FunctionName": {"Value": {"Ref": function_id(target)}},
    }
    return resources, outputs


def _where(settings: Settings, lane: Lane) -> str:
    """Who an alarm is about: "sluice dev" for the one lane, "sluice dev lane vendor-a" for a named one."""
    return f"sluice {settings.stage}" + ("" if lane.implicit else f" lane {lane.name}")


# What a state machine's role needs to deliver its logs to CloudWatch Logs: these log-delivery
# actions take no narrower resource than "*" (Step Functions' logging documentation).
LOG_DELIVERY = ["logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
                "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
                "logs:DescribeLogGroups"]
# X-Ray for a state machine (it also reads the sampling rules); no resource narrower than "*".
STATES_XRAY = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
               "xray:GetSamplingTargets"]


def _flow_resources(settings: Settings, lane: Lane) -> tuple[dict[str, Node], dict[str, Node]]:
    """A workflow lane's state machine, its SNS topics, its role and its log group, the alarms on
    its executions, and its outputs (docs/adr/0007-workflow-lanes.md)."""
    flow = lane.flow
    assert flow is not None
    p, name, where = lane_prefix(lane), settings.state_machine_name(lane), _where(settings, lane)
    step = function_id(lane.target_key)
    try:
        definition = load_definition(flow.path)
    except DefinitionError as exc:
        raise ValueError(f"lanes.{lane.name}.flow: {exc}") from None
    topics = {topic: topic_id(lane, topic) for topic in flow.topics}
    role, log_group = f"{p}StateMachineRole", f"{p}StateMachineLogGroup"
    statements = [
        # Its Task states call the lane's step function, and nothing else.
        _allow(["lambda:InvokeFunction"], _arn(step)),
        *(_allow(["sns:Publish"], {"Ref": logical}) for logical in topics.values()),
        _allow(LOG_DELIVERY, "*"),
        _allow(STATES_XRAY, "*"),
    ]
    resources: dict[str, Node] = {
        **{logical: {"Type": "AWS::SNS::Topic", "Properties": {
            "TopicName": settings.topic_name(lane, topic),
            # The AWS-managed key: the publisher is the state machine's role, a principal of this
            # account, which that key's policy lets use it through SNS (unlike CloudWatch alarms,
            # which is why the alarm topic is not encrypted this way).
            "KmsMasterKeyId": "alias/aws/sns"}} for topic, logical in topics.items()},
        role: {"Type": "AWS::IAM::Role", "Properties": {
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole",
                # Only Step Functions acting for this account (confused-deputy guard).
                "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}}]},
            "Policies": [{"PolicyName": "state-machine",
                          "PolicyDocument": {"Version": "2012-10-17", "Statement": statements}}]}},
        log_group: {"Type": "AWS::Logs::LogGroup", "Metadata": "${self:custom.logGroupSkips.Metadata}",
                    "Properties": {"LogGroupName": f"/aws/vendedlogs/states/{name}",
                                   "RetentionInDays": "${self:custom.logRetentionDays}"}},
        machine_id(lane): {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
            "StateMachineName": name,
            # Standard, not Express: an execution name is refused for 90 days after it closed,
            # which is what makes a start exactly-once (ADR 0007), and runs may last minutes.
            "StateMachineType": "STANDARD",
            "RoleArn": _arn(role),
            # The file's text as Step Functions takes it (a string; moto's CloudFormation reads only
            # this form). Its ${Name} placeholders pass the framework's variable resolver untouched
            # (a serverless variable is ${source:address}; a placeholder has no source) and are
            # filled in by CloudFormation, as sluice.asl.substitute does locally.
            "DefinitionString": json.dumps(definition, indent=2),
            "DefinitionSubstitutions": {STEP_FUNCTION_PLACEHOLDER: _arn(step),
                                        **{f"{topic}TopicArn": {"Ref": logical} for topic, logical in topics.items()}},
            # Failures only, without the item's data: the failure scan reads the history itself.
            "LoggingConfiguration": {"Level": "ERROR", "IncludeExecutionData": False,
                                     "Destinations": [{"CloudWatchLogsLogGroup": {"LogGroupArn": _arn(log_group)}}]},
            "TracingConfiguration": {"Enabled": True}}},
    }
    for metric, what in (("ExecutionsFailed", "failed"), ("ExecutionsTimedOut", "timed out"),
                         ("ExecutionsAborted", "were aborted")):
        resources[f"{p}{metric}Alarm"] = _alarm(
            f"{where}: executions of {name} {what} (their items go to the dead-letter queue: `sluice dlq list`)",
            "AWS/States", metric, "StateMachineArn", {"Ref": machine_id(lane)}, "Sum", 300, 0)
    outputs = {f"{p}StateMachineArn": {"Value": {"Ref": machine_id(lane)}},
               **{f"{p}{topic}TopicArn": {"Value": {"Ref": logical}} for topic, logical in topics.items()}}
    return resources, outputs


def resources(settings: Settings) -> dict[str, Node]:
    """Every lane's resources and outputs, and the lanes' additions to the function resources
    the framework generates (checkov skips, the workers' VPC attachment, log group skips)."""
    out: dict[str, Node] = {"Resources": {}, "Outputs": {}, "extensions": {}}
    for lane in settings.resolved_lanes():
        made, outputs = _lane_resources(settings, lane)
        out["Resources"].update(made)
        out["Outputs"].update(outputs)
        if lane.flow is not None:
            made, outputs = _flow_resources(settings, lane)
            out["Resources"].update(made)
            out["Outputs"].update(outputs)
        consumer, target = normalized(lane.function_key("consumer")), normalized(lane.target_key)
        out["extensions"].update({
            f"{consumer}LambdaFunction": {"Metadata": SKIPS % "consumer"},
            # A step function reads the database like a worker: the same VPC attachment.
            f"{target}LambdaFunction": {"Properties": {"VpcConfig": "${self:custom.vpcConfig}"},
                                        "Metadata": SKIPS % lane.target_role},
            f"{target}IamRoleLambdaExecution": {
                "Properties": {"ManagedPolicyArns": "${self:custom.vpcManagedPolicies}"}},
            f"{consumer}LogGroup": "${self:custom.logGroupSkips}",
            f"{target}LogGroup": "${self:custom.logGroupSkips}",
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
