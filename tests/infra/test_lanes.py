"""The three-lane stage (config/lanes.yml) packages to a queue, DLQ, consumer, worker, schedule and
alarms per lane, each role reaching only its own lane, and deploys into moto's CloudFormation.

Logical ids are spelt out here as the framework names them (a function key's '-' becomes 'Dash'),
not computed by the code under test."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.settings import PROJECT_ROOT, RUNTIME_ENV_NAMES, Lane
from sluice_tools.functions import function_table

from .cfn import grants, role_of
from .conftest import Packaged
from .test_deploy_moto import Deployed, deploy
from .test_template import GUARDED, TASK_SECRETS, same_value

pytestmark = pytest.mark.infra

# lane -> what its resources' logical ids start with
PREFIX = {"ledger": "Ledger", "vendor-a": "VendorDasha", "vendor-b": "VendorDashb"}
SECRET = "secret"


def fid(key: str) -> str:
    """The framework's logical id of the function with serverless.yml key ``key``."""
    return key[0].upper() + key[1:].replace("-", "Dash") + "LambdaFunction"


def queue(lane: str) -> str:
    return f"{PREFIX[lane]}JobsQueue"


def dlq(lane: str) -> str:
    return f"{PREFIX[lane]}DeadLetterQueue"


def expected_grants(lane: str, role: str, stage: str) -> set[tuple[str, str]]:
    """What a lane's consumer or worker may do on SQS, Lambda and Secrets Manager: its own lane only."""
    if role == "consumer":
        return {("sqs:ReceiveMessage", queue(lane)), ("sqs:ChangeMessageVisibility", queue(lane)),
                ("sqs:ListQueueTags", queue(lane)), ("sqs:TagQueue", queue(lane)),
                ("lambda:InvokeFunction", fid(f"worker-{lane}"))}
    return {("sqs:DeleteMessage", queue(lane)), ("sqs:ChangeMessageVisibility", queue(lane)),
            ("sqs:SendMessage", dlq(lane)), ("secretsmanager:GetSecretValue", SECRET),
            ("secretsmanager:GetSecretValue", TASK_SECRETS.replace("<stage>", stage))}


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
    # THEN the template has exactly its functions: enqueuer, migrate and a consumer and worker per lane
    assert functions == {fid(key) for key in table} == (
        {fid("enqueuer"), fid("migrate")} | {fid(f"{role}-{x}") for x in PREFIX for role in ("consumer", "worker")})
    for key, spec in table.items():
        props = resources[fid(key)]["Properties"]
        assert props["FunctionName"] == settings.function_name(key)
        assert (props["Handler"], props["Timeout"], props["MemorySize"]) == (spec.handler, spec.timeout_s,
                                                                            spec.memory_mb), key
        assert props.get("ReservedConcurrentExecutions") == spec.reserved_concurrency, key
        assert tuple(props["Environment"]["Variables"]) == RUNTIME_ENV_NAMES, key
    for lane in the_lanes(lanes):
        consumer = resources[fid(f"consumer-{lane.name}")]["Properties"]
        worker = resources[fid(f"worker-{lane.name}")]["Properties"]
        # AND the worker's reserved concurrency is the lane's cap, the consumer's its consumers
        assert worker["ReservedConcurrentExecutions"] == lane.drain.max_parallel == lane.worker.reserved_concurrency
        assert consumer["ReservedConcurrentExecutions"] == lane.drain.consumers
        assert worker["Timeout"] == lane.worker.timeout_s
    # (the lanes differ, so a lane reading another's settings would show)
    assert [x.drain.max_parallel for x in the_lanes(lanes)] == [4, 8, 2]


def test_each_lane_function_gets_its_own_lane_environment(lanes: Packaged) -> None:
    # GIVEN each lane's consumer and worker
    settings, resources = lanes.settings, lanes.resources
    for lane in the_lanes(lanes):
        expected = settings.runtime_env(queue_url="", dlq_url="", worker_function=settings.function_name(
            f"worker-{lane.name}"), lane=lane)
        for role in ("consumer", "worker"):
            env = resources[fid(f"{role}-{lane.name}")]["Properties"]["Environment"]["Variables"]
            # THEN its literal values are Settings.runtime_env(lane=...) ...
            literal = {k: v for k, v in env.items() if isinstance(v, str)}
            assert set(literal) == set(expected) - {"SLUICE_QUEUE_URL", "SLUICE_DLQ_URL", "SLUICE_QUEUE_ARN",
                                                    "SLUICE_DB_SECRET_ID"}
            assert all(same_value(literal[k], expected[k]) for k in literal), (lane.name, role)
            assert literal["SLUICE_LANE"] == lane.name and literal["SLUICE_LANES"] == ""
            # ... and its queue, DLQ and worker are its own lane's
            assert env["SLUICE_QUEUE_URL"] == {"Ref": queue(lane.name)}
            assert env["SLUICE_DLQ_URL"] == {"Ref": dlq(lane.name)}
            assert env["SLUICE_QUEUE_ARN"] == {"Fn::GetAtt": [queue(lane.name), "Arn"]}
            assert env["SLUICE_WORKER_FUNCTION"] == f"sluice-lanes-worker-{lane.name}"
            assert env["SLUICE_DB_SECRET_ID"]["Fn::If"][0] == "CreateDatabaseSecret"


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
        assert {a.split(":")[0] for a, _ in allowed} <= {"sqs", "lambda", "secretsmanager", "logs", "xray"}, key
        roles[key] = {g for g in allowed if g[0].startswith(GUARDED)}
    # THEN a lane's consumer and worker grant exactly their own lane's queue, DLQ and worker ...
    for lane in PREFIX:
        for role in ("consumer", "worker"):
            assert roles[f"{role}-{lane}"] == expected_grants(lane, role, "lanes"), (role, lane)
    # ... the enqueuer sends to every lane's queue and nothing else, migrate reads the secret only
    assert roles["enqueuer"] == {("sqs:SendMessage", queue(x)) for x in PREFIX}
    assert roles["migrate"] == {("secretsmanager:GetSecretValue", SECRET)}
    # AND no lane's role names another lane's queue, DLQ or worker by any action
    for lane in PREFIX:
        others = {r for x in PREFIX if x != lane for r in (queue(x), dlq(x), fid(f"worker-{x}"))}
        for role in ("consumer", "worker"):
            assert not {r for _, r in roles[f"{role}-{lane}"]} & others, (role, lane)
    # AND no two functions share a role
    assert len({str(role_of(template, fid(k))) for k in roles}) == len(roles)


def test_each_lane_has_its_alarms(lanes: Packaged) -> None:
    # GIVEN the template's alarms
    alarms = [v["Properties"] for v in lanes.resources.values() if v["Type"] == "AWS::CloudWatch::Alarm"]
    watched = {(a["MetricName"], json.dumps(a["Dimensions"][0]["Value"], sort_keys=True)) for a in alarms}
    # THEN each lane has four: its DLQ not empty, its oldest message age, its consumer's errors and
    # its worker's throttles, all to the alarm topic
    expected = set()
    for lane in PREFIX:
        expected |= {
            ("ApproximateNumberOfMessagesVisible", json.dumps({"Fn::GetAtt": [dlq(lane), "QueueName"]})),
            ("ApproximateAgeOfOldestMessage", json.dumps({"Fn::GetAtt": [queue(lane), "QueueName"]})),
            ("Errors", json.dumps({"Ref": fid(f"consumer-{lane}")})),
            ("Throttles", json.dumps({"Ref": fid(f"worker-{lane}")})),
        }
    assert len(alarms) == 4 * len(PREFIX) and watched == expected
    target = {"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}
    assert all(a["AlarmActions"] == [target] == a["OKActions"] for a in alarms)
    age = [a for a in alarms if a["MetricName"] == "ApproximateAgeOfOldestMessage"]
    assert all(a["Threshold"] == lanes.settings.alarms.oldest_message_age_s for a in age)
    assert all(any(lane in a["AlarmDescription"] for lane in PREFIX) for a in alarms)


def test_each_lanes_worker_joins_the_vpc_when_the_database_is_managed(lanes: Packaged) -> None:
    # GIVEN each lane's worker and its role
    resources = lanes.resources
    for lane in PREFIX:
        worker = resources[fid(f"worker-{lane}")]
        role = resources[fid(f"worker-{lane}").replace("LambdaFunction", "IamRoleLambdaExecution")]
        # THEN it takes the VPC attachment and the VPC policy under Condition ManagedDatabase, like
        # the lane-less worker, and carries its justified checkov skips
        assert worker["Properties"]["VpcConfig"]["Fn::If"][0] == "ManagedDatabase"
        assert "AWSLambdaVPCAccessExecutionRole" in str(role["Properties"]["ManagedPolicyArns"])
        assert {s["id"] for s in worker["Metadata"]["checkov"]["skip"]} == {"CKV_AWS_116", "CKV_AWS_117",
                                                                            "CKV_AWS_173"}
        consumer = resources[fid(f"consumer-{lane}")]
        assert "VpcConfig" not in consumer["Properties"]
    # AND every function has a log group with a retention (one per function plus the API's)
    groups = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert len(groups) == len(function_table(lanes.settings)) + 1
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


# -- deployed into moto --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed_lanes(lanes: Packaged, moto_endpoint: str) -> Iterator[Deployed]:
    yield deploy(lanes, moto_endpoint)


def role_grants(deployed: Deployed, role_arn: str) -> set[tuple[str, str]]:
    """Every (action, resource ARN) on SQS and Lambda a role's inline policies allow, read back from IAM."""
    iam = deployed.client("iam")
    role_name = role_arn.rsplit("/", 1)[1]
    documents = [iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"]
                 for n in iam.list_role_policies(RoleName=role_name)["PolicyNames"]]
    # moto 5.2.5 hands back a policy that CloudFormation made as the Python repr of a dict
    parsed = [ast.literal_eval(d) if isinstance(d, str) else d for d in documents]
    found: set[tuple[str, str]] = set()
    for statement in (s for d in parsed for s in d["Statement"]):
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        actions = [a for a in actions if a.startswith(("sqs:", "lambda:"))]
        if not actions:
            continue  # logs, xray, and the secrets (moto makes no secret, so it drops their Resource)
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        found |= {(a, str(r)) for a in actions for r in resources}
    return found


def lane_arns(deployed: Deployed) -> dict[str, dict[str, Any]]:
    """Each lane's queue and DLQ attributes and worker ARN, as moto reports them."""
    sqs, lam, settings = deployed.client("sqs"), deployed.client("lambda"), deployed.packaged.settings
    found = {}
    for lane in settings.resolved_lanes():
        urls = {k: sqs.get_queue_url(QueueName=name)["QueueUrl"]
                for k, name in (("queue", lane.queue.fifo_name), ("dlq", lane.queue.dlq_fifo_name))}
        attributes = {k: sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["All"])["Attributes"]
                      for k, u in urls.items()}
        worker = lam.get_function_configuration(FunctionName=settings.function_name(f"worker-{lane.name}"))
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
    assert len({a["dlq"]["QueueArn"] for a in arns.values()}) == 3


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
        assert env["SLUICE_WORKER_FUNCTION"] == settings.function_name(f"worker-{lane.name}")
        assert env["SLUICE_DRAIN_MAX_PARALLEL"] == str(lane.drain.max_parallel)
        assert same_value(env["SLUICE_DRAIN_MAX_RATE"], str(lane.drain.max_rate))
        assert env["SLUICE_WORKER_TIMEOUT_S"] == str(lane.worker.timeout_s)
        expected_reserved = lane.drain.max_parallel if spec.role == "worker" else lane.drain.consumers
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
