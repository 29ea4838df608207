"""Deploy the packaged dev and prod stages into moto's CloudFormation the way `serverless deploy` does:
create the stack from the create template (the deployment bucket), upload the artifact, then
update the stack with the full template. Then read back what moto made.

moto silently skips Secrets Manager secrets, CloudWatch alarms and API Gateway v2 resources
(FACTS.md); test_template.py asserts those from the template."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from sluice.settings import RUNTIME_ENV_NAMES
from sluice_tools.functions import function_table

from .conftest import Packaged
from .test_template import EXPECTED_GRANTS, GUARDED

pytestmark = pytest.mark.infra

REGION = "us-east-1"
STACK_DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
STACK_FAILED = {"CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "UPDATE_ROLLBACK_COMPLETE",
                "UPDATE_ROLLBACK_FAILED", "UPDATE_FAILED"}


@dataclass(frozen=True)
class Deployed:
    packaged: Packaged
    stack_name: str
    clients: dict[str, Any]

    def client(self, service: str) -> Any:
        return self.clients[service]


def wait_for_stack(cfn: Any, name: str, deadline_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_s
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        status = stack["StackStatus"]
        if status in STACK_DONE:
            return dict(stack)
        if status in STACK_FAILED:
            events = cfn.describe_stack_events(StackName=name)["StackEvents"]
            reasons = [(e["LogicalResourceId"], e.get("ResourceStatusReason")) for e in events
                       if "FAILED" in e["ResourceStatus"]]
            raise AssertionError(f"stack {name} ended {status}: {reasons}")
        assert time.monotonic() < deadline, f"stack {name} still {status}"
        time.sleep(0.2)  # polling interval of the deadline loop above


def deploy(packaged: Packaged, moto_endpoint: str) -> Deployed:
    """Deploy one packaged stage into moto's CloudFormation as `serverless deploy` does."""
    clients = {s: boto3.client(s, endpoint_url=moto_endpoint, region_name=REGION)
               for s in ("cloudformation", "s3", "sqs", "lambda", "iam", "events", "logs", "ec2", "rds",
                         "stepfunctions", "sns")}
    cfn = clients["cloudformation"]
    name = f"sluice-{packaged.stage}"
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(packaged.create_template),
                     Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])
    stack = wait_for_stack(cfn, name)
    bucket = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}["ServerlessDeploymentBucketName"]
    template = packaged.template
    key = template["Resources"]["EnqueuerLambdaFunction"]["Properties"]["Code"]["S3Key"]
    clients["s3"].upload_file(str(packaged.directory / "sluice.zip"), bucket, key)
    cfn.update_stack(StackName=name, TemplateBody=json.dumps(template),
                     Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])
    wait_for_stack(cfn, name)
    # No delete_stack afterwards: moto 5.2.5 does not record the exports an update adds and fails
    # deleting such a stack; the moto server is this session's own and goes away with it.
    return Deployed(packaged, name, clients)


@pytest.fixture(scope="module")
def deployed(packaged: Packaged, moto_endpoint: str) -> Iterator[Deployed]:
    """Each packaged stage (dev: own database; prod: managed RDS in a VPC), deployed."""
    yield deploy(packaged, moto_endpoint)


def test_queues_exist_with_the_configured_settings(deployed: Deployed) -> None:
    # GIVEN the deployed dev stack and its settings
    sqs, q = deployed.client("sqs"), deployed.packaged.settings.queue
    # WHEN reading the queues' attributes from moto
    url = sqs.get_queue_url(QueueName=q.fifo_name)["QueueUrl"]
    dlq_url = sqs.get_queue_url(QueueName=q.dlq_fifo_name)["QueueUrl"]
    jobs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
    # THEN both are FIFO, encrypted, with visibility, retention and redrive from config
    assert jobs["FifoQueue"] == "true" and dlq["FifoQueue"] == "true"
    assert jobs["SqsManagedSseEnabled"] == "true" and dlq["SqsManagedSseEnabled"] == "true"
    assert int(jobs["VisibilityTimeout"]) == q.visibility_s
    assert int(jobs["MessageRetentionPeriod"]) == q.retention_s
    assert int(dlq["MessageRetentionPeriod"]) == q.dlq_retention_days * 86400
    redrive = json.loads(jobs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == q.max_receive_count


def test_functions_exist_as_the_function_table_says(deployed: Deployed) -> None:
    # GIVEN the function table of the same settings
    settings = deployed.packaged.settings
    lam = deployed.client("lambda")
    for key, spec in function_table(settings).items():
        # WHEN reading each deployed function from moto
        name = settings.function_name(key)
        config = lam.get_function_configuration(FunctionName=name)
        # THEN it has the table's handler, timeout, memory, concurrency and environment names
        assert config["Handler"] == spec.handler
        assert config["Timeout"] == spec.timeout_s
        assert config["MemorySize"] == spec.memory_mb
        assert config["Runtime"] == "python3.12"
        # moto makes no secret (see above), so the Ref in SLUICE_DB_SECRET_ID resolves to nothing
        # and moto drops that one variable; test_template.py checks it is set from the secret.
        assert set(config["Environment"]["Variables"]) == set(RUNTIME_ENV_NAMES) - {"SLUICE_DB_SECRET_ID"}
        reserved = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
        assert reserved == spec.reserved_concurrency, key
    # AND the references resolved to the stack's own queue and worker
    consumer = lam.get_function_configuration(FunctionName=settings.function_name("consumer"))
    env = consumer["Environment"]["Variables"]
    assert env["SLUICE_QUEUE_URL"].endswith("/" + settings.queue.fifo_name)
    assert env["SLUICE_DLQ_URL"].endswith("/" + settings.queue.dlq_fifo_name)
    assert env["SLUICE_WORKER_FUNCTION"] == settings.function_name("worker")


def test_schedule_targets_the_consumer(deployed: Deployed) -> None:
    # GIVEN the deployed stack's EventBridge rules
    events, settings = deployed.client("events"), deployed.packaged.settings
    consumer_arn = deployed.client("lambda").get_function_configuration(
        FunctionName=settings.function_name("consumer"))["FunctionArn"]
    rules = [r for r in events.list_rules()["Rules"]
             if any(t["Arn"] == consumer_arn for t in events.list_targets_by_rule(Rule=r["Name"])["Targets"])]
    # THEN one rule per consumer starts the consumer on the configured schedule
    assert len(rules) == settings.drain.consumers
    assert all(r["ScheduleExpression"] == settings.drain.schedule and r["State"] == "ENABLED" for r in rules)


def role_actions(deployed: Deployed, role_arn: str) -> set[str]:
    """The actions a role's inline policies allow, read back from IAM."""
    iam = deployed.client("iam")
    role_name = role_arn.rsplit("/", 1)[1]
    documents = [iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"]
                 for n in iam.list_role_policies(RoleName=role_name)["PolicyNames"]]
    # moto 5.2.5 hands back a policy that CloudFormation made as the Python repr of a dict
    parsed = [ast.literal_eval(d) if isinstance(d, str) else d for d in documents]
    actions: set[str] = set()
    for statement in (s for d in parsed for s in d["Statement"]):
        action = statement["Action"]
        actions.update([action] if isinstance(action, str) else action)
    return actions


def test_each_function_has_its_own_role_with_the_listed_actions(deployed: Deployed) -> None:
    settings = deployed.packaged.settings
    lam = deployed.client("lambda")
    roles = {}
    for key, expected in EXPECTED_GRANTS.items():
        # GIVEN each function as deployed
        roles[key] = lam.get_function_configuration(FunctionName=settings.function_name(key))["Role"]
        # WHEN reading its role's inline policies back from IAM
        actions = role_actions(deployed, roles[key])
        # THEN it allows exactly that function's SQS, Lambda and Secrets Manager actions
        assert {a for a in actions if a.startswith(GUARDED)} == {a for a, _ in expected}, key
    # AND no two functions share a role
    assert len(set(roles.values())) == len(roles)


def test_a_managed_database_gets_an_encrypted_rds_in_a_private_vpc(deployed: Deployed) -> None:
    # GIVEN a stage with database.managed true (prod), or not (dev)
    db = deployed.packaged.settings.database
    instances = deployed.client("rds").describe_db_instances()["DBInstances"]
    # THEN moto made an encrypted MariaDB with backups, not publicly reachable, exactly when managed
    mariadb = [i for i in instances if i["Engine"] == "mariadb" and i["DBName"] == db.name]
    if not db.managed:
        assert mariadb == []
        return
    assert len(mariadb) == 1
    instance = mariadb[0]
    assert instance["StorageEncrypted"] is True and instance["PubliclyAccessible"] is False
    assert instance["BackupRetentionPeriod"] == db.backup_retention_days
    assert instance["DBInstanceClass"] == db.instance_class
    # (moto drops DeletionProtection from CloudFormation; test_template.py asserts it there)
    # AND the worker runs in the instance's private subnets (moto reports a fixed VpcId for Lambda)
    worker = deployed.client("lambda").get_function_configuration(
        FunctionName=deployed.packaged.settings.function_name("worker"))
    db_subnets = {s["SubnetIdentifier"] for s in instance["DBSubnetGroup"]["Subnets"]}
    assert len(db_subnets) == 2 and set(worker["VpcConfig"]["SubnetIds"]) == db_subnets
    subnets = deployed.client("ec2").describe_subnets(SubnetIds=sorted(db_subnets))["Subnets"]
    assert {s["VpcId"] for s in subnets} == {instance["DBSubnetGroup"]["VpcId"]}
    assert not any(s["MapPublicIpOnLaunch"] for s in subnets)


def test_log_groups_exist_with_retention(deployed: Deployed) -> None:
    # GIVEN the deployed functions' log groups
    settings = deployed.packaged.settings
    groups = deployed.client("logs").describe_log_groups(
        logGroupNamePrefix=f"/aws/lambda/{settings.service}-{settings.stage}-")["logGroups"]
    # THEN each function has one, with a retention
    assert {g["logGroupName"].rsplit("-", 1)[1] for g in groups} == set(function_table(settings))
    assert all(g["retentionInDays"] == 30 for g in groups)
