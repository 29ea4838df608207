"""The four-lane stage (config/lanes.yml) packages to a queue, DLQ, consumer, worker, schedule and
alarms per lane, each role reaching only its own lane, and deploys into moto's CloudFormation.

Its first lane, invoices-flow, is a workflow lane: a state machine (the invoice flow), its SNS topic,
its role and log group, and a step function instead of a worker (docs/adr/0007-workflow-lanes.md).

Logical ids are spelt out here as the framework names them (a function key's '-' becomes 'Dash'),
not computed by the code under test."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.asl import load_definition, placeholders, substitute
from sluice.settings import PROJECT_ROOT, RUNTIME_ENV_NAMES, Lane
from sluice_tools.functions import function_table

from .cfn import grants, role_of, symbol
from .conftest import Packaged
from .test_deploy_moto import REGION, Deployed, deploy
from .test_template import GUARDED, TASK_SECRETS, same_value

pytestmark = pytest.mark.infra

ACCOUNT = "123456789012"  # moto's default account

# lane -> what its resources' logical ids start with
PREFIX = {"invoices-flow": "InvoicesDashflow", "ledger": "Ledger", "vendor-a": "VendorDasha", "vendor-b": "VendorDashb"}
FLOW = "invoices-flow"  # the workflow lane; the others are worker lanes
WORKER_LANES = [x for x in PREFIX if x != FLOW]
SECRET = "secret"
MACHINE = "InvoicesDashflowStateMachine"
MACHINE_NAME = "sluice-lanes-invoices-flow"
TOPIC = "InvoicesDashflowNotifyTopic"
EXECUTIONS = f"arn:${{AWS::Partition}}:states:${{AWS::Region}}:${{AWS::AccountId}}:execution:{MACHINE_NAME}:*"


def fid(key: str) -> str:
    """The framework's logical id of the function with serverless.yml key ``key``."""
    return key[0].upper() + key[1:].replace("-", "Dash") + "LambdaFunction"


def queue(lane: str) -> str:
    return f"{PREFIX[lane]}JobsQueue"


def dlq(lane: str) -> str:
    return f"{PREFIX[lane]}DeadLetterQueue"


def target(lane: str) -> str:
    """The key of the function that applies a lane's items: its step function or its worker."""
    return f"step-{lane}" if lane == FLOW else f"worker-{lane}"


def expected_grants(lane: str, role: str, stage: str) -> set[tuple[str, str]]:
    """What a lane's consumer, worker or step function may do on SQS, Lambda, Step Functions and
    Secrets Manager: its own lane only."""
    secrets = {("secretsmanager:GetSecretValue", SECRET),
               ("secretsmanager:GetSecretValue", TASK_SECRETS.replace("<stage>", stage))}
    if role == "consumer" and lane == FLOW:
        # It starts executions and dead-letters failures; it invokes no function
        return {("sqs:ReceiveMessage", queue(lane)), ("sqs:ChangeMessageVisibility", queue(lane)),
                ("sqs:DeleteMessage", queue(lane)), ("sqs:ListQueueTags", queue(lane)), ("sqs:TagQueue", queue(lane)),
                ("sqs:SendMessage", dlq(lane)), ("states:StartExecution", MACHINE),
                ("states:ListExecutions", MACHINE), ("states:DescribeExecution", EXECUTIONS),
                ("states:GetExecutionHistory", EXECUTIONS)}
    if role == "consumer":
        return {("sqs:ReceiveMessage", queue(lane)), ("sqs:ChangeMessageVisibility", queue(lane)),
                ("sqs:ListQueueTags", queue(lane)), ("sqs:TagQueue", queue(lane)),
                ("lambda:InvokeFunction", fid(f"worker-{lane}"))}
    if role == "step":
        return secrets  # no SQS: the consumer deleted the message when it started the execution
    return {("sqs:DeleteMessage", queue(lane)), ("sqs:ChangeMessageVisibility", queue(lane)),
            ("sqs:SendMessage", dlq(lane))} | secrets


def the_lanes(packaged: Packaged) -> list[Lane]:
    lanes = packaged.settings.resolved_lanes()
    assert [x.name for x in lanes] == list(PREFIX), "config/lanes.yml's lanes changed; update PREFIX"
    return lanes


# -- the template ------------------------------------------------------------------------------


def test_each_lane_has_its_own_fifo_queue_redriving_to_its_own_dlq(lanes: Packaged) -> None:
    # GIVEN the packaged three-lane template
    resources = lanes.resources
    queues = {k for k, v in resources.items() if v["Type"] == "AWS::SQS::Queue"}
    # THEN there are exactly a queue and a DLQ per lane (no lane-less JobsQueue left over) ...
    assert queues == {queue(x) for x in PREFIX} | {dlq(x) for x in PREFIX}
    for lane in the_lanes(lanes):
        q = lane.queue
        jobs, dead = resources[queue(lane.name)]["Properties"], resources[dlq(lane.name)]["Properties"]
        # ... each FIFO and encrypted, named after its lane, with its lane's queue settings ...
        assert (jobs["QueueName"], dead["QueueName"]) == (f"sluice-lanes-jobs-{lane.name}.fifo",
                                                          f"sluice-lanes-jobs-{lane.name}-dlq.fifo")
        assert jobs["FifoQueue"] is dead["FifoQueue"] is True
        assert jobs["SqsManagedSseEnabled"] is dead["SqsManagedSseEnabled"] is True
        assert jobs["ContentBasedDeduplication"] is False
        assert (jobs["VisibilityTimeout"], jobs["MessageRetentionPeriod"]) == (q.visibility_s, q.retention_s)
        assert dead["MessageRetentionPeriod"] == q.dlq_retention_days * 86400
        # ... redriving to its own DLQ
        assert jobs["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [dlq(lane.name), "Arn"]},
                                         "maxReceiveCount": q.max_receive_count}


def test_each_lane_has_a_consumer_and_a_worker_with_its_own_settings(lanes: Packaged) -> None:
    # GIVEN the function table of the same settings
    settings, resources = lanes.settings, lanes.resources
    table = function_table(settings)
    functions = {k for k, v in resources.items() if v["Type"] == "AWS::Lambda::Function"}
    # THEN the template has exactly its functions: enqueuer, migrate and a consumer and worker per
    # lane (a step function in the workflow lane, which has no worker)
    assert functions == {fid(key) for key in table} == (
        {fid("enqueuer"), fid("migrate")} | {fid(f"consumer-{x}") for x in PREFIX} | {fid(target(x)) for x in PREFIX})
    assert fid(f"worker-{FLOW}") not in resources
    assert resources[fid(target(FLOW))]["Properties"]["Handler"] == "worker/step.lambda_handler"
    for key, spec in table.items():
        props = resources[fid(key)]["Properties"]
        assert props["FunctionName"] == settings.function_name(key)
        assert (props["Handler"], props["Timeout"], props["MemorySize"]) == (spec.handler, spec.timeout_s,
                                                                            spec.memory_mb), key
        assert props.get("ReservedConcurrentExecutions") == spec.reserved_concurrency, key
        assert tuple(props["Environment"]["Variables"]) == RUNTIME_ENV_NAMES, key
    for lane in the_lanes(lanes):
        consumer = resources[fid(f"consumer-{lane.name}")]["Properties"]
        worker = resources[fid(target(lane.name))]["Properties"]
        # AND the worker's (step function's) reserved concurrency is the lane's cap, the consumer's
        # its consumers
        assert worker["ReservedConcurrentExecutions"] == lane.drain.max_parallel == lane.worker.reserved_concurrency
        assert consumer["ReservedConcurrentExecutions"] == lane.drain.consumers
        assert worker["Timeout"] == lane.worker.timeout_s
    # (the lanes differ, so a lane reading another's settings would show)
    assert [x.drain.max_parallel for x in the_lanes(lanes)] == [6, 4, 8, 2]


def test_each_lane_function_gets_its_own_lane_environment(lanes: Packaged) -> None:
    # GIVEN each lane's consumer and worker (step function)
    settings, resources = lanes.settings, lanes.resources
    for lane in the_lanes(lanes):
        flow = lane.name == FLOW
        # (a workflow lane has no worker to name: its state machine calls the step function)
        worker = "" if flow else f"sluice-lanes-worker-{lane.name}"
        expected = settings.runtime_env(queue_url="", dlq_url="", worker_function=worker, lane=lane)
        for key in (f"consumer-{lane.name}", target(lane.name)):
            env = resources[fid(key)]["Properties"]["Environment"]["Variables"]
            # THEN its literal values are Settings.runtime_env(lane=...) ...
            references = {"SLUICE_QUEUE_URL", "SLUICE_DLQ_URL", "SLUICE_QUEUE_ARN", "SLUICE_DB_SECRET_ID"}
            if flow and key.startswith("consumer"):
                references.add("SLUICE_FLOW_ARN")
            literal = {k: v for k, v in env.items() if isinstance(v, str)}
            assert set(literal) == set(expected) - references, key
            assert all(same_value(literal[k], expected[k]) for k in literal), key
            assert literal["SLUICE_LANE"] == lane.name and literal["SLUICE_LANES"] == ""
            # ... and its queue, DLQ and worker are its own lane's
            assert env["SLUICE_QUEUE_URL"] == {"Ref": queue(lane.name)}
            assert env["SLUICE_DLQ_URL"] == {"Ref": dlq(lane.name)}
            assert env["SLUICE_QUEUE_ARN"] == {"Fn::GetAtt": [queue(lane.name), "Arn"]}
            assert env["SLUICE_WORKER_FUNCTION"] == worker
            assert env["SLUICE_DB_SECRET_ID"]["Fn::If"][0] == "CreateDatabaseSecret"
    # AND the workflow lane's consumer starts executions of its own lane's state machine (the Ref
    # is the ARN), which may run for the definition's TimeoutSeconds; its step function is given
    # no machine (the machine names the step, so the step naming it would be a cycle)
    consumer = resources[fid(f"consumer-{FLOW}")]["Properties"]["Environment"]["Variables"]
    step = resources[fid(target(FLOW))]["Properties"]["Environment"]["Variables"]
    assert consumer["SLUICE_FLOW_ARN"] == {"Ref": MACHINE} and consumer["SLUICE_FLOW_MAX_RUN_S"] == "900"
    assert step["SLUICE_FLOW_ARN"] == ""
    assert all(resources[fid(f"consumer-{x}")]["Properties"]["Environment"]["Variables"]["SLUICE_FLOW_ARN"] == ""
               for x in WORKER_LANES)


def test_the_enqueuer_routes_with_every_lanes_queue(lanes: Packaged) -> None:
    # GIVEN the enqueuer's SLUICE_LANES, a Fn::Join of JSON text and each lane's queue Ref
    settings = lanes.settings
    env = lanes.resources[fid("enqueuer")]["Properties"]["Environment"]["Variables"]
    separator, parts = env["SLUICE_LANES"]["Fn::Join"]
    # WHEN CloudFormation resolves each queue's Ref to its URL
    urls = {queue(x): f"https://sqs.example/{x}" for x in PREFIX}
    resolved = separator.join(urls[p["Ref"]] if isinstance(p, dict) else p for p in parts)
    # THEN it is exactly what Settings.lanes_env writes for those URLs (what the local stack gets)
    assert resolved == settings.lanes_env({x: f"https://sqs.example/{x}" for x in PREFIX})
    assert [r["name"] for r in json.loads(resolved)] == list(PREFIX)
    # AND the enqueuer is tied to no single lane's queue or worker
    assert (env["SLUICE_LANE"], env["SLUICE_QUEUE_URL"], env["SLUICE_WORKER_FUNCTION"]) == ("", "", "")


def test_each_consumer_runs_on_its_lanes_schedule(lanes: Packaged) -> None:
    # GIVEN the EventBridge rules of the template
    rules = [r["Properties"] for r in lanes.resources.values() if r["Type"] == "AWS::Events::Rule"]
    # THEN each lane's consumer has one rule per consumer, on its lane's schedule, and nothing else
    # is scheduled
    for lane in the_lanes(lanes):
        target = [{"Fn::GetAtt": [fid(f"consumer-{lane.name}"), "Arn"]}]
        own = [r for r in rules if [t["Arn"] for t in r["Targets"]] == target]
        assert len(own) == lane.drain.consumers
        assert all(r["ScheduleExpression"] == lane.drain.schedule for r in own)
    assert len(rules) == sum(x.drain.consumers for x in the_lanes(lanes))
    assert {x.drain.schedule for x in the_lanes(lanes)} == {"rate(1 minute)", "rate(2 minutes)"}


def test_each_role_reaches_only_its_own_lane(lanes: Packaged) -> None:
    # GIVEN each function's own role
    template = lanes.template
    roles: dict[str, set[tuple[str, str]]] = {}
    for key in function_table(lanes.settings):
        allowed = grants(role_of(template, fid(key)))
        assert not any("*" in action for action, _ in allowed), key
        assert {a.split(":")[0] for a, _ in allowed} <= {"sqs", "lambda", "states", "secretsmanager", "logs",
                                                          "xray"}, key
        roles[key] = {g for g in allowed if g[0].startswith((*GUARDED, "states:"))}
    # THEN a lane's consumer and worker (step function) grant exactly their own lane's queue, DLQ,
    # worker or state machine ...
    for lane in PREFIX:
        assert roles[f"consumer-{lane}"] == expected_grants(lane, "consumer", "lanes"), lane
        role = "step" if lane == FLOW else "worker"
        assert roles[target(lane)] == expected_grants(lane, role, "lanes"), lane
    # ... the enqueuer sends to every lane's queue and nothing else, migrate reads the secret only
    assert roles["enqueuer"] == {("sqs:SendMessage", queue(x)) for x in PREFIX}
    assert roles["migrate"] == {("secretsmanager:GetSecretValue", SECRET)}
    # AND no lane's role names another lane's queue, DLQ, worker or state machine by any action
    for lane in PREFIX:
        others = {r for x in PREFIX if x != lane for r in (queue(x), dlq(x), fid(target(x)))}
        if lane != FLOW:
            others |= {MACHINE, EXECUTIONS}
        for key in (f"consumer-{lane}", target(lane)):
            assert not {r for _, r in roles[key]} & others, key
    # AND the workflow lane's consumer invokes no function, its step function touches no queue
    assert not any(a.startswith("lambda:") for a, _ in roles[f"consumer-{FLOW}"])
    assert not any(a.startswith(("sqs:", "states:")) for a, _ in grants(role_of(template, fid(target(FLOW)))))
    # AND no two functions share a role
    assert len({str(role_of(template, fid(k))) for k in roles}) == len(roles)


def test_each_lane_has_its_alarms(lanes: Packaged) -> None:
    # GIVEN the template's alarms
    alarms = [v["Properties"] for v in lanes.resources.values() if v["Type"] == "AWS::CloudWatch::Alarm"]
    watched = {(a["Namespace"], a["MetricName"], a["Dimensions"][0]["Name"],
                json.dumps(a["Dimensions"][0]["Value"], sort_keys=True)) for a in alarms}
    # THEN each lane has four: its DLQ not empty, its oldest message age, its consumer's errors and
    # its worker's (step function's) throttles, all to the alarm topic ...
    expected = set()
    for lane in PREFIX:
        expected |= {
            ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
             json.dumps({"Fn::GetAtt": [dlq(lane), "QueueName"]})),
            ("AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName",
             json.dumps({"Fn::GetAtt": [queue(lane), "QueueName"]})),
            ("AWS/Lambda", "Errors", "FunctionName", json.dumps({"Ref": fid(f"consumer-{lane}")})),
            ("AWS/Lambda", "Throttles", "FunctionName", json.dumps({"Ref": fid(target(lane))})),
        }
    # ... and the workflow lane three more, on its state machine's failed, timed-out and aborted runs
    expected |= {("AWS/States", metric, "StateMachineArn", json.dumps({"Ref": MACHINE}))
                 for metric in ("ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted")}
    assert len(alarms) == 4 * len(PREFIX) + 3 and watched == expected
    assert "InvoicesDashflowStepThrottlesAlarm" in lanes.resources
    assert "InvoicesDashflowWorkerThrottlesAlarm" not in lanes.resources
    topic = {"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}
    assert all(a["AlarmActions"] == [topic] == a["OKActions"] for a in alarms)
    age = [a for a in alarms if a["MetricName"] == "ApproximateAgeOfOldestMessage"]
    assert all(a["Threshold"] == lanes.settings.alarms.oldest_message_age_s for a in age)
    assert all(any(lane in a["AlarmDescription"] for lane in PREFIX) for a in alarms)


def test_each_lanes_worker_joins_the_vpc_when_the_database_is_managed(lanes: Packaged) -> None:
    # GIVEN each lane's worker (the workflow lane's step function) and its role
    resources = lanes.resources
    for lane in PREFIX:
        worker = resources[fid(target(lane))]
        role = resources[fid(target(lane)).replace("LambdaFunction", "IamRoleLambdaExecution")]
        # THEN it takes the VPC attachment and the VPC policy under Condition ManagedDatabase, like
        # the lane-less worker, and carries its justified checkov skips
        assert worker["Properties"]["VpcConfig"]["Fn::If"][0] == "ManagedDatabase"
        assert "AWSLambdaVPCAccessExecutionRole" in str(role["Properties"]["ManagedPolicyArns"])
        assert {s["id"] for s in worker["Metadata"]["checkov"]["skip"]} == {"CKV_AWS_116", "CKV_AWS_117",
                                                                            "CKV_AWS_173"}
        consumer = resources[fid(f"consumer-{lane}")]
        assert "VpcConfig" not in consumer["Properties"]
    # AND every function has a log group with a retention (one per function plus the API's and the
    # state machine's)
    groups = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert len(groups) == len(function_table(lanes.settings)) + 2
    assert all(g["RetentionInDays"] == 30 for g in groups)


def test_a_lane_the_expansion_cannot_resolve_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # GIVEN a stage whose lane overrides a setting with an invalid value
    (tmp_path / "config").mkdir()
    config = (PROJECT_ROOT / "config" / "lanes.yml").read_text()
    broken = config.replace("worker: {reserved_concurrency: 2}", "worker: {reserved_concurrency: 0}")
    assert broken != config
    (tmp_path / "config" / "broken.yml").write_text(broken)
    # WHEN infra/derived.js's expansion runs on it (what `serverless package` calls)
    result = subprocess.run([sys.executable, "-m", "sluice_tools.infra_expand", "--stage", "broken", "--part",
                             "functions", "--root", str(tmp_path)], capture_output=True, text=True, check=False)
    # THEN it exits non-zero with one line naming the lane and the setting, and prints no JSON
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("sluice: lanes.vendor-b: worker.reserved_concurrency"), result.stderr


# -- the workflow lane -----------------------------------------------------------------------------

INVOICE_FLOW = PROJECT_ROOT / "worker" / "flows" / "invoice.asl.json"
MACHINE_ROLE = "InvoicesDashflowStateMachineRole"
MACHINE_LOGS = "InvoicesDashflowStateMachineLogGroup"
# What Step Functions needs to deliver a machine's logs; these take no resource narrower than "*".
LOG_DELIVERY = {"logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
                "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
                "logs:DescribeLogGroups"}


def test_the_workflow_lane_has_a_state_machine_from_its_definition_file(lanes: Packaged) -> None:
    # GIVEN the packaged template and the workflow lane's settings
    resources, settings = lanes.resources, lanes.settings
    machines = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::StepFunctions::StateMachine"}
    # THEN that lane, and no other, has a Standard state machine named after it, run by its own role
    assert list(machines) == [MACHINE]
    props = machines[MACHINE]
    assert props["StateMachineName"] == MACHINE_NAME == settings.state_machine_name(settings.lane(FLOW))
    assert props["StateMachineType"] == "STANDARD"
    assert props["RoleArn"] == {"Fn::GetAtt": [MACHINE_ROLE, "Arn"]}
    # AND its definition is the file's, placeholders and all
    definition = json.loads(props["DefinitionString"])
    assert definition == load_definition(INVOICE_FLOW)
    # AND every placeholder is substituted, by the lane's step function and the lane's topic
    substitutions = props["DefinitionSubstitutions"]
    assert substitutions == {"StepFunctionArn": {"Fn::GetAtt": [fid(target(FLOW)), "Arn"]},
                             "NotifyTopicArn": {"Ref": TOPIC}}
    assert placeholders(definition) == set(substitutions)
    # WHEN CloudFormation substitutes them (each reference shown by the resource it names)
    resolved = substitute(definition, {k: symbol(v) for k, v in substitutions.items()})
    # THEN each step calls the step function and the notification publishes to the topic
    tasks = {name: state for name, state in resolved["States"].items() if state["Type"] == "Task"}
    assert {name: state["Resource"] for name, state in tasks.items() if "task" in state["Parameters"]} == {
        "SaveInvoice": fid(target(FLOW)), "PostToAccounting": fid(target(FLOW))}
    assert (tasks["Notify"]["Resource"], tasks["Notify"]["Parameters"]["TopicArn"]) == (
        "arn:aws:states:::sns:publish", TOPIC)
    # AND it logs failures, without the items' data, to a log group that expires, and traces
    assert props["LoggingConfiguration"] == {
        "Level": "ERROR", "IncludeExecutionData": False,
        "Destinations": [{"CloudWatchLogsLogGroup": {"LogGroupArn": {"Fn::GetAtt": [MACHINE_LOGS, "Arn"]}}}]}
    assert resources[MACHINE_LOGS]["Properties"] == {"LogGroupName": f"/aws/vendedlogs/states/{MACHINE_NAME}",
                                                     "RetentionInDays": 30}
    assert props["TracingConfiguration"] == {"Enabled": True}


def test_the_workflow_lane_has_its_topic_encrypted_with_the_aws_managed_key(lanes: Packaged) -> None:
    # GIVEN the template's SNS topics
    topics = {k: v["Properties"] for k, v in lanes.resources.items() if v["Type"] == "AWS::SNS::Topic"}
    # THEN besides the alarm topic there is the workflow lane's Notify topic, named after the lane
    assert set(topics) == {"AlarmTopic", TOPIC}
    assert topics[TOPIC] == {"TopicName": "sluice-lanes-invoices-flow-notify", "KmsMasterKeyId": "alias/aws/sns"}
    assert topics[TOPIC]["TopicName"] == lanes.settings.topic_name(lanes.settings.lane(FLOW), "Notify")


def test_the_state_machine_may_invoke_its_step_function_and_publish_to_its_topic_only(lanes: Packaged) -> None:
    # GIVEN the state machine's own role
    role = lanes.resources[MACHINE_ROLE]
    # THEN only Step Functions, acting for this account, may take it ...
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [(t["Effect"], t["Principal"], t["Action"]) for t in trust] == [
        ("Allow", {"Service": "states.amazonaws.com"}, "sts:AssumeRole")]
    assert trust[0]["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    allowed = grants(role)
    # ... it may invoke its lane's step function and publish to its lane's topic, on no other resource ...
    assert {g for g in allowed if g[1] != "*"} == {("lambda:InvokeFunction", fid(target(FLOW))),
                                                   ("sns:Publish", TOPIC)}
    # ... and beyond that only deliver its logs and traces, which take no narrower resource
    assert {a for a, r in allowed if r == "*"} == LOG_DELIVERY | {
        "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"}
    assert not any("*" in action for action, _ in allowed)


def test_the_workflow_lane_outputs_its_state_machine_arn(lanes: Packaged) -> None:
    # GIVEN the template's outputs / THEN tooling finds the lane's state machine, topic and step function
    outputs = lanes.template["Outputs"]
    assert outputs["InvoicesDashflowStateMachineArn"]["Value"] == {"Ref": MACHINE}
    assert outputs["InvoicesDashflowNotifyTopicArn"]["Value"] == {"Ref": TOPIC}
    assert outputs["InvoicesDashflowStepFunctionName"]["Value"] == {"Ref": fid(target(FLOW))}
    assert "InvoicesDashflowWorkerFunctionName" not in outputs
    assert all(f"{PREFIX[x]}WorkerFunctionName" in outputs for x in WORKER_LANES)


# -- deployed into moto --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed_lanes(lanes: Packaged, moto_endpoint: str) -> Iterator[Deployed]:
    yield deploy(lanes, moto_endpoint)


def role_grants(deployed: Deployed, role_arn: str) -> set[tuple[str, str]]:
    """Every (action, resource ARN) on SQS, Lambda, Step Functions and SNS a role's inline policies
    allow, read back from IAM."""
    iam = deployed.client("iam")
    role_name = role_arn.rsplit("/", 1)[1]
    documents = [iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"]
                 for n in iam.list_role_policies(RoleName=role_name)["PolicyNames"]]
    # moto 5.2.5 hands back a policy that CloudFormation made as the Python repr of a dict
    parsed = [ast.literal_eval(d) if isinstance(d, str) else d for d in documents]
    found: set[tuple[str, str]] = set()
    for statement in (s for d in parsed for s in d["Statement"]):
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        actions = [a for a in actions if a.startswith(("sqs:", "lambda:", "states:", "sns:"))]
        if not actions:
            continue  # logs, xray, and the secrets (moto makes no secret, so it drops their Resource)
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        found |= {(a, str(r)) for a in actions for r in resources}
    return found


def lane_arns(deployed: Deployed) -> dict[str, dict[str, Any]]:
    """Each lane's queue and DLQ attributes and worker (step function) ARN, as moto reports them."""
    sqs, lam, settings = deployed.client("sqs"), deployed.client("lambda"), deployed.packaged.settings
    found = {}
    for lane in settings.resolved_lanes():
        urls = {k: sqs.get_queue_url(QueueName=name)["QueueUrl"]
                for k, name in (("queue", lane.queue.fifo_name), ("dlq", lane.queue.dlq_fifo_name))}
        attributes = {k: sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["All"])["Attributes"]
                      for k, u in urls.items()}
        worker = lam.get_function_configuration(FunctionName=settings.function_name(target(lane.name)))
        found[lane.name] = {"urls": urls, **attributes, "worker": worker["FunctionArn"]}
    return found


def test_deployed_lanes_have_their_queues_and_dlqs(deployed_lanes: Deployed) -> None:
    # GIVEN the deployed three-lane stack / WHEN reading every lane's queues from moto
    arns = lane_arns(deployed_lanes)
    for lane in deployed_lanes.packaged.settings.resolved_lanes():
        jobs, dead = arns[lane.name]["queue"], arns[lane.name]["dlq"]
        # THEN each is FIFO and encrypted and redrives to its own lane's DLQ
        assert jobs["FifoQueue"] == dead["FifoQueue"] == "true"
        assert jobs["SqsManagedSseEnabled"] == dead["SqsManagedSseEnabled"] == "true"
        assert int(jobs["VisibilityTimeout"]) == lane.queue.visibility_s
        redrive = json.loads(jobs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == dead["QueueArn"]
        assert int(redrive["maxReceiveCount"]) == lane.queue.max_receive_count
    assert len({a["dlq"]["QueueArn"] for a in arns.values()}) == len(PREFIX)


def test_deployed_lane_functions_have_their_lanes_cap_and_environment(deployed_lanes: Deployed) -> None:
    # GIVEN the deployed stack and its function table
    settings, lam = deployed_lanes.packaged.settings, deployed_lanes.client("lambda")
    arns = lane_arns(deployed_lanes)
    for key, spec in function_table(settings).items():
        # WHEN reading each function back from moto
        name = settings.function_name(key)
        config = lam.get_function_configuration(FunctionName=name)
        reserved = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
        # THEN it has the table's handler, limits and reserved concurrency
        assert (config["Handler"], config["Timeout"], config["MemorySize"]) == (spec.handler, spec.timeout_s,
                                                                              spec.memory_mb), key
        assert reserved == spec.reserved_concurrency, key
        if spec.lane is None:
            continue
        lane = settings.lane(spec.lane)
        env = config["Environment"]["Variables"]
        # AND a lane's consumer and worker run with that lane's queue, DLQ, worker and numbers
        assert env["SLUICE_LANE"] == lane.name
        assert env["SLUICE_QUEUE_URL"].endswith("/" + lane.queue.fifo_name), key
        assert env["SLUICE_DLQ_URL"].endswith("/" + lane.queue.dlq_fifo_name), key
        assert env["SLUICE_QUEUE_ARN"] == arns[lane.name]["queue"]["QueueArn"], key
        assert env["SLUICE_WORKER_FUNCTION"] == ("" if lane.name == FLOW else settings.function_name(
            f"worker-{lane.name}"))
        assert env["SLUICE_DRAIN_MAX_PARALLEL"] == str(lane.drain.max_parallel)
        assert same_value(env["SLUICE_DRAIN_MAX_RATE"], str(lane.drain.max_rate))
        assert env["SLUICE_WORKER_TIMEOUT_S"] == str(lane.worker.timeout_s)
        expected_reserved = lane.drain.max_parallel if spec.role in ("worker", "step") else lane.drain.consumers
        assert reserved == expected_reserved, key
    # AND the enqueuer's routes carry every lane's queue URL, in routing order
    enqueuer = lam.get_function_configuration(FunctionName=settings.function_name("enqueuer"))
    routes = json.loads(enqueuer["Environment"]["Variables"]["SLUICE_LANES"])
    assert [r["name"] for r in routes] == list(PREFIX)
    for r in routes:
        assert r["queue_url"].endswith("/" + settings.lane(r["name"]).queue.fifo_name)
    assert [{k: v for k, v in r.items() if k != "queue_url"} for r in routes] == [
        {k: v for k, v in r.items() if k != "queue_url"} for r in json.loads(settings.lanes_env(
            {x: "" for x in PREFIX}))]


def test_deployed_consumers_run_on_their_lanes_schedules(deployed_lanes: Deployed) -> None:
    # GIVEN the deployed EventBridge rules
    events, lam = deployed_lanes.client("events"), deployed_lanes.client("lambda")
    settings = deployed_lanes.packaged.settings
    rules = events.list_rules()["Rules"]
    targets = {r["Name"]: [t["Arn"] for t in events.list_targets_by_rule(Rule=r["Name"])["Targets"]] for r in rules}
    for lane in settings.resolved_lanes():
        arn = lam.get_function_configuration(FunctionName=settings.function_name(f"consumer-{lane.name}"))[
            "FunctionArn"]
        own = [r for r in rules if targets[r["Name"]] == [arn]]
        # THEN each lane's consumer is started by its own rules, on its lane's schedule
        assert len(own) == lane.drain.consumers, lane.name
        assert all(r["ScheduleExpression"] == lane.drain.schedule and r["State"] == "ENABLED" for r in own)


def test_deployed_roles_reach_only_their_own_lane(deployed_lanes: Deployed) -> None:
    # GIVEN each deployed function's role, read back from IAM, and each lane's queues and worker
    settings, lam = deployed_lanes.packaged.settings, deployed_lanes.client("lambda")
    arns = lane_arns(deployed_lanes)
    roles = {key: lam.get_function_configuration(FunctionName=settings.function_name(key))["Role"]
             for key in function_table(settings)}
    assert len(set(roles.values())) == len(roles)  # no two functions share a role
    for lane, a in arns.items():
        q, d, w = a["queue"]["QueueArn"], a["dlq"]["QueueArn"], a["worker"]
        if lane == FLOW:
            continue  # test_deployed_workflow_lane_roles_reach_only_their_machine
        # THEN a lane's consumer receives from its own queue and invokes its own worker only ...
        assert role_grants(deployed_lanes, roles[f"consumer-{lane}"]) == {
            ("sqs:ReceiveMessage", q), ("sqs:ChangeMessageVisibility", q), ("sqs:ListQueueTags", q),
            ("sqs:TagQueue", q), ("lambda:InvokeFunction", w)}
        # ... its worker deletes from its own queue and dead-letters to its own DLQ only
        assert role_grants(deployed_lanes, roles[f"worker-{lane}"]) == {
            ("sqs:DeleteMessage", q), ("sqs:ChangeMessageVisibility", q), ("sqs:SendMessage", d)}
    # AND the enqueuer sends to every lane's queue, and to nothing else
    assert role_grants(deployed_lanes, roles["enqueuer"]) == {("sqs:SendMessage", a["queue"]["QueueArn"])
                                                              for a in arns.values()}
    assert role_grants(deployed_lanes, roles["migrate"]) == set()


def _moto_config(endpoint: str, change: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(f"{endpoint}/moto-api/config", method="POST" if change else "GET",
                                     data=json.dumps(change).encode() if change else None)
    with urllib.request.urlopen(request) as response:  # noqa: S310 (the local moto server)
        return dict(json.loads(response.read()))


@pytest.fixture
def sfn(deployed_lanes: Deployed) -> Iterator[Any]:
    """Step Functions as CloudFormation made it. moto 5.2.5 serves the Step Functions API from a
    second, executing backend while its execute_state_machine option is on (the session's server
    may have it on: tests/functional/test_flows.py), and its CloudFormation makes machines in the
    first one; so the option is off while a test reads them, then as it was."""
    client = deployed_lanes.client("stepfunctions")
    endpoint = client.meta.endpoint_url
    executing = _moto_config(endpoint).get("stepfunctions", {}).get("execute_state_machine", False)
    _moto_config(endpoint, {"stepfunctions": {"execute_state_machine": False}})
    yield client
    _moto_config(endpoint, {"stepfunctions": {"execute_state_machine": executing}})


def test_deployed_workflow_lane_has_its_state_machine_topic_and_step_function(deployed_lanes: Deployed,
                                                                             sfn: Any) -> None:
    # GIVEN the deployed four-lane stack
    sns, lam = deployed_lanes.client("sns"), deployed_lanes.client("lambda")
    settings = deployed_lanes.packaged.settings
    # WHEN reading back its state machines, topics and the workflow lane's step function
    machines = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
    topics = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    step = lam.get_function_configuration(FunctionName=settings.function_name(target(FLOW)))
    # THEN there is the lane's one state machine, Standard, with the definition file's text (moto
    # 5.2.5 applies no DefinitionSubstitutions and drops LoggingConfiguration and
    # TracingConfiguration: the template tests above assert those)
    assert list(machines) == [MACHINE_NAME]
    machine = sfn.describe_state_machine(stateMachineArn=machines[MACHINE_NAME])
    assert machine["type"] == "STANDARD"
    assert json.loads(machine["definition"]) == load_definition(INVOICE_FLOW)
    # AND the stack outputs its ARN, which the lane's consumer is given
    stack = deployed_lanes.client("cloudformation").describe_stacks(StackName=deployed_lanes.stack_name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["InvoicesDashflowStateMachineArn"] == machines[MACHINE_NAME]
    consumer = lam.get_function_configuration(FunctionName=settings.function_name(f"consumer-{FLOW}"))
    assert consumer["Environment"]["Variables"]["SLUICE_FLOW_ARN"] == machines[MACHINE_NAME]
    # AND the lane's topic exists, encrypted with the AWS-managed key, and is output
    topic = [t for t in topics if t.endswith(":sluice-lanes-invoices-flow-notify")]
    assert len(topic) == 1 and outputs["InvoicesDashflowNotifyTopicArn"] == topic[0]
    assert sns.get_topic_attributes(TopicArn=topic[0])["Attributes"]["KmsMasterKeyId"] == "alias/aws/sns"
    # AND the step function runs the step handler with the lane's cap as its reserved concurrency
    assert step["Handler"] == "worker/step.lambda_handler"
    reserved = lam.get_function_concurrency(FunctionName=step["FunctionName"])["ReservedConcurrentExecutions"]
    assert reserved == settings.lane(FLOW).drain.max_parallel


def test_deployed_workflow_lane_roles_reach_only_their_machine(deployed_lanes: Deployed, sfn: Any) -> None:
    # GIVEN the deployed workflow lane: its queues, step function, state machine and topic
    settings, lam, iam = deployed_lanes.packaged.settings, deployed_lanes.client("lambda"), deployed_lanes.client("iam")
    a = lane_arns(deployed_lanes)[FLOW]
    q, d, step = a["queue"]["QueueArn"], a["dlq"]["QueueArn"], a["worker"]
    machine = sfn.describe_state_machine(
        stateMachineArn=f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{MACHINE_NAME}")
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:sluice-lanes-invoices-flow-notify"
    executions = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{MACHINE_NAME}:*"
    role_of_function = {key: lam.get_function_configuration(FunctionName=settings.function_name(key))["Role"]
                        for key in (f"consumer-{FLOW}", target(FLOW))}
    # WHEN reading each role's policies back from IAM
    # THEN the consumer drains its own queue into its own machine and DLQ, and invokes nothing
    assert role_grants(deployed_lanes, role_of_function[f"consumer-{FLOW}"]) == {
        ("sqs:ReceiveMessage", q), ("sqs:ChangeMessageVisibility", q), ("sqs:DeleteMessage", q),
        ("sqs:ListQueueTags", q), ("sqs:TagQueue", q), ("sqs:SendMessage", d),
        ("states:StartExecution", machine["stateMachineArn"]), ("states:ListExecutions", machine["stateMachineArn"]),
        ("states:DescribeExecution", executions), ("states:GetExecutionHistory", executions)}
    # AND the step function touches no queue, machine or topic
    assert role_grants(deployed_lanes, role_of_function[target(FLOW)]) == set()
    # AND the machine's role, trusted by Step Functions, invokes the step function and publishes
    # to the topic, nothing else
    assert role_grants(deployed_lanes, machine["roleArn"]) == {("lambda:InvokeFunction", step),
                                                               ("sns:Publish", topic)}
    trust = iam.get_role(RoleName=machine["roleArn"].rsplit("/", 1)[1])["Role"]["AssumeRolePolicyDocument"]
    trust = ast.literal_eval(trust) if isinstance(trust, str) else trust
    assert [t["Principal"] for t in trust["Statement"]] == [{"Service": "states.amazonaws.com"}]
