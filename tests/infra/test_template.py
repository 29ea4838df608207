"""The packaged template says what config/<stage>.yml and the function table say."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from sluice.settings import PROJECT_ROOT, RUNTIME_ENV_NAMES
from sluice_tools.functions import function_table

from .cfn import condition, exists, grants, parameter_defaults, resolve, role_of, symbol
from .conftest import Packaged

pytestmark = pytest.mark.infra

TASK_SECRETS = "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:sluice/<stage>/tasks/*"
# What each function may do on SQS, Lambda and Secrets Manager, and on which resource: nothing more.
EXPECTED_GRANTS = {
    "enqueuer": {("sqs:SendMessage", "JobsQueue")},
    "consumer": {
        ("sqs:ReceiveMessage", "JobsQueue"),
        ("sqs:ChangeMessageVisibility", "JobsQueue"),
        # the adaptive limit's saved state, a tag on its own queue (docs/adr/0004)
        ("sqs:ListQueueTags", "JobsQueue"),
        ("sqs:TagQueue", "JobsQueue"),
        ("lambda:InvokeFunction", "WorkerLambdaFunction"),
    },
    "worker": {
        ("sqs:DeleteMessage", "JobsQueue"),
        ("sqs:ChangeMessageVisibility", "JobsQueue"),
        ("sqs:SendMessage", "DeadLetterQueue"),
        ("secretsmanager:GetSecretValue", "secret"),
        # the task modules' own secrets, under <service>/<stage>/tasks/ (resolved per stage below)
        ("secretsmanager:GetSecretValue", TASK_SECRETS),
    },
    "migrate": {("secretsmanager:GetSecretValue", "secret")},
}
GUARDED = ("sqs:", "lambda:", "secretsmanager:")


def same_value(a: str, b: str) -> bool:
    """Equal as numbers when both are numbers ('200' and '200.0' mean the same rate)."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def logical_id(key: str) -> str:
    return f"{key.capitalize()}LambdaFunction"


def test_queue_and_dlq_follow_config(packaged: Packaged) -> None:
    # GIVEN the packaged template and the stage's settings
    q = packaged.settings.queue
    resources = packaged.resources
    # WHEN reading the two queues
    jobs, dlq = resources["JobsQueue"]["Properties"], resources["DeadLetterQueue"]["Properties"]
    # THEN both are FIFO and encrypted, with the configured visibility, retention and redrive
    assert jobs["QueueName"] == q.fifo_name and dlq["QueueName"] == q.dlq_fifo_name
    assert jobs["FifoQueue"] is True and dlq["FifoQueue"] is True
    assert jobs["SqsManagedSseEnabled"] is True and dlq["SqsManagedSseEnabled"] is True
    assert jobs["ContentBasedDeduplication"] is False  # the enqueuer sets its own dedup ids
    assert jobs["VisibilityTimeout"] == q.visibility_s
    assert jobs["MessageRetentionPeriod"] == q.retention_s
    assert jobs["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
                                     "maxReceiveCount": q.max_receive_count}
    assert dlq["MessageRetentionPeriod"] == q.dlq_retention_days * 86400 == 14 * 86400


def test_functions_agree_with_the_function_table(packaged: Packaged) -> None:
    # GIVEN the function table the local stack runs from the same settings
    settings = packaged.settings
    table = function_table(settings)
    resources = packaged.resources
    functions = {k for k, v in resources.items() if v["Type"] == "AWS::Lambda::Function"}
    # THEN the template has exactly those functions, each with the table's settings
    assert functions == {logical_id(key) for key in table}
    expected_env = settings.runtime_env(queue_url="<ref>", dlq_url="<ref>",
                                        worker_function=settings.function_name("worker"))
    for key, spec in table.items():
        props = resources[logical_id(key)]["Properties"]
        assert props["FunctionName"] == settings.function_name(key)
        assert props["Handler"] == spec.handler
        assert props["Timeout"] == spec.timeout_s
        assert props["MemorySize"] == spec.memory_mb
        assert props.get("ReservedConcurrentExecutions") == spec.reserved_concurrency, key
        env = props["Environment"]["Variables"]
        assert tuple(env) == spec.env_names == RUNTIME_ENV_NAMES
        # literal values equal what the settings derive; the rest are references to stack resources
        literal = {k: v for k, v in env.items() if isinstance(v, str)}
        references = {"SLUICE_QUEUE_URL", "SLUICE_DLQ_URL", "SLUICE_QUEUE_ARN", "SLUICE_DB_SECRET_ID"}
        assert set(literal) == set(expected_env) - references
        assert all(same_value(literal[k], expected_env[k]) for k in literal), (literal, expected_env)
        assert env["SLUICE_QUEUE_URL"] == {"Ref": "JobsQueue"}
        assert env["SLUICE_DLQ_URL"] == {"Ref": "DeadLetterQueue"}
        assert env["SLUICE_QUEUE_ARN"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
        assert env["SLUICE_DB_SECRET_ID"]["Fn::If"][0] == "CreateDatabaseSecret"


def test_the_step_function_agrees_with_the_function_table(lanes: Packaged) -> None:
    # GIVEN the lanes stage, whose workflow lane runs a step function instead of a worker
    settings = lanes.settings
    steps = {key: spec for key, spec in function_table(settings).items() if spec.role == "step"}
    assert list(steps) == ["step-invoices-flow"]
    spec = steps["step-invoices-flow"]
    props = lanes.resources["StepDashinvoicesDashflowLambdaFunction"]["Properties"]
    # THEN the template's function has the table's name, handler, limits and environment names
    assert props["FunctionName"] == settings.function_name(spec.key) == "sluice-lanes-step-invoices-flow"
    assert (props["Handler"], props["Timeout"], props["MemorySize"]) == (
        spec.handler, spec.timeout_s, spec.memory_mb) == ("worker/step.lambda_handler", 30, 256)
    assert props["ReservedConcurrentExecutions"] == spec.reserved_concurrency
    env = props["Environment"]["Variables"]
    assert tuple(env) == spec.env_names == RUNTIME_ENV_NAMES
    # AND its literal values are its lane's runtime environment, naming no worker and no machine
    assert spec.lane is not None
    expected = settings.runtime_env(queue_url="", dlq_url="", worker_function="", lane=settings.lane(spec.lane))
    literal = {k: v for k, v in env.items() if isinstance(v, str)}
    assert set(literal) == set(expected) - {"SLUICE_QUEUE_URL", "SLUICE_DLQ_URL", "SLUICE_QUEUE_ARN",
                                            "SLUICE_DB_SECRET_ID"}
    assert all(same_value(literal[k], expected[k]) for k in literal), (literal, expected)
    assert (literal["SLUICE_WORKER_FUNCTION"], literal["SLUICE_FLOW_ARN"]) == ("", "")
    # AND it loads the task module the flow's accounting step runs
    assert "worker.tasks.accounting" in literal["SLUICE_TASK_MODULES"].split(",")


def test_a_config_without_flow_lanes_makes_no_workflow_resources(packaged: Packaged) -> None:
    # GIVEN dev and prod, configs without a workflow lane
    resources, outputs = packaged.resources, packaged.template["Outputs"]
    # THEN there is no state machine, no role outside the functions', no topic but the alarms', no
    # step function, and no output naming a machine
    types = {v["Type"] for v in resources.values()}
    assert "AWS::StepFunctions::StateMachine" not in types
    assert [k for k, v in resources.items() if v["Type"] == "AWS::SNS::Topic"] == ["AlarmTopic"]
    roles = {k for k, v in resources.items() if v["Type"] == "AWS::IAM::Role"}
    assert roles == {"IamRoleLambdaExecution"} | {f"{key.capitalize()}IamRoleLambdaExecution"
                                                  for key in function_table(packaged.settings)}
    assert not [k for k in resources if k.startswith(("Step", "StateMachine")) or "Executions" in k]
    assert not [k for k in outputs if "StateMachine" in k or ("Topic" in k and k != "AlarmTopicArn")]


def test_consumer_schedule_starts_one_drain_per_consumer(packaged: Packaged) -> None:
    # GIVEN the settings' schedule and number of consumers
    drain = packaged.settings.drain
    # WHEN collecting the EventBridge rules and what they target
    rules = [r["Properties"] for r in packaged.resources.values() if r["Type"] == "AWS::Events::Rule"]
    # THEN there is one rule per consumer, each on the configured schedule, each starting the consumer
    assert len(rules) == drain.consumers
    schedule = function_table(packaged.settings)["consumer"].schedule
    for rule in rules:
        assert rule["ScheduleExpression"] == schedule == drain.schedule
        assert [t["Arn"] for t in rule["Targets"]] == [{"Fn::GetAtt": ["ConsumerLambdaFunction", "Arn"]}]


def test_each_role_grants_exactly_what_its_function_uses(packaged: Packaged) -> None:
    # GIVEN each function's own role
    template = packaged.template
    for key, expected in EXPECTED_GRANTS.items():
        role = role_of(template, logical_id(key))
        allowed = grants(role)
        # THEN its SQS, Lambda and Secrets Manager grants are exactly the listed ones ...
        expected = {(a, r.replace("<stage>", packaged.settings.stage)) for a, r in expected}
        assert {g for g in allowed if g[0].startswith(GUARDED)} == expected, key
        # ... no wildcard action anywhere, and the rest is only logging and tracing
        assert not any("*" in action for action, _ in allowed), key
        assert {a.split(":")[0] for a, _ in allowed} <= {"sqs", "lambda", "secretsmanager", "logs", "xray"}
    # AND the worker's role is the only one to touch the DLQ, by any action
    for key in EXPECTED_GRANTS:
        dlq_grants = {a for a, resource in grants(role_of(template, logical_id(key))) if resource == "DeadLetterQueue"}
        assert dlq_grants == ({"sqs:SendMessage"} if key == "worker" else set()), key


def test_a_throttled_tick_is_dropped_within_a_minute_not_retried_for_hours(packaged: Packaged) -> None:
    # GIVEN the consumer, started asynchronously by EventBridge, throttled while a drain runs
    configs = [v["Properties"] for v in packaged.resources.values() if v["Type"] == "AWS::Lambda::EventInvokeConfig"]
    # THEN its async events expire after 60 s (Lambda's default is 6 hours) and are never retried
    assert configs == [{"FunctionName": {"Ref": "ConsumerLambdaFunction"}, "DestinationConfig": {},
                        "Qualifier": "$LATEST", "MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 0}]


def test_alarms_go_to_the_alarm_topic(packaged: Packaged) -> None:
    # GIVEN the template's alarms
    template, alarms_cfg = packaged.template, packaged.settings.alarms
    alarms = {k: v["Properties"] for k, v in template["Resources"].items()
              if v["Type"] == "AWS::CloudWatch::Alarm"}
    # THEN the four alarms watch the right metrics ...
    watched = {(a["Namespace"], a["MetricName"], str(a["Dimensions"][0]["Value"])) for a in alarms.values()}
    assert watched == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible",
         str({"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]})),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", str({"Fn::GetAtt": ["JobsQueue", "QueueName"]})),
        ("AWS/Lambda", "Errors", str({"Ref": "ConsumerLambdaFunction"})),
        ("AWS/Lambda", "Throttles", str({"Ref": "WorkerLambdaFunction"})),
    }
    assert alarms["OldestMessageAgeAlarm"]["Threshold"] == alarms_cfg.oldest_message_age_s
    # ... and notify a topic: a new one (no topic_arn in config), with the e-mail when one is set
    target = {"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}
    assert all(a["AlarmActions"] == [target] for a in alarms.values())
    assert exists(template, "AlarmTopic") is (alarms_cfg.topic_arn == "")
    assert exists(template, "AlarmEmailSubscription") is bool(alarms_cfg.email and not alarms_cfg.topic_arn)


def test_secret_is_made_by_the_stack_with_the_configured_name(packaged: Packaged) -> None:
    # GIVEN a config without existing_secret_arn (moto ignores secrets, so this is checked here)
    db = packaged.settings.database
    secret = packaged.resources["DatabaseSecret"]
    # THEN the stack makes the secret under the configured name, in the RDS JSON shape
    assert exists(packaged.template, "DatabaseSecret") is (db.existing_secret_arn == "")
    assert secret["Properties"]["Name"] == db.secret
    assert '"engine": "mariadb"' in secret["Properties"]["GenerateSecretString"]["SecretStringTemplate"]
    assert secret["Properties"]["GenerateSecretString"]["GenerateStringKey"] == "password"


def test_stage_choices_are_parameters_defaulting_to_the_config(packaged: Packaged) -> None:
    # GIVEN the stage's settings / THEN a plain `serverless deploy` gets them as parameter defaults
    s = packaged.settings
    assert parameter_defaults(packaged.template) == {
        "DatabaseManaged": str(s.database.managed).lower(), "ExistingDatabaseSecretArn": s.database.existing_secret_arn,
        "AlarmTopicArn": s.alarms.topic_arn, "AlarmEmail": s.alarms.email, "Stage": s.stage}


def test_an_existing_topic_and_secret_are_used_instead_of_new_ones(dev: Packaged) -> None:
    # GIVEN alarms.topic_arn and database.existing_secret_arn set (as the parameters they become)
    template = dev.template
    topic = "arn:aws:sns:us-east-1:123456789012:ops-alarms"
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:shared-db-AbCdEf"
    params = {"AlarmTopicArn": topic, "ExistingDatabaseSecretArn": secret, "AlarmEmail": "ops@example.com"}
    # THEN the stack makes no topic, subscription or secret of its own ...
    for made in ("AlarmTopic", "AlarmEmailSubscription", "DatabaseSecret", "DatabaseSecretAttachment"):
        assert not exists(template, made, params), made
    # ... every alarm notifies the given topic ...
    alarms = [v["Properties"] for v in template["Resources"].values() if v["Type"] == "AWS::CloudWatch::Alarm"]
    assert alarms and all(resolve(template, a["AlarmActions"], params) == [topic] for a in alarms)
    # ... and the worker and migrate read the given secret, and may read only that one (besides,
    # for the worker, the task modules' own secrets under <service>/<stage>/tasks/)
    for key in ("worker", "migrate"):
        props = template["Resources"][logical_id(key)]["Properties"]
        assert resolve(template, props["Environment"]["Variables"]["SLUICE_DB_SECRET_ID"], params) == secret
        statements = [st for p in role_of(template, logical_id(key))["Properties"]["Policies"]
                      for st in p["PolicyDocument"]["Statement"] if "secretsmanager:GetSecretValue" in st["Action"]]
        database = [st for st in statements if symbol(st["Resource"]) != TASK_SECRETS.replace("<stage>", "dev")]
        assert [resolve(template, st["Resource"], params) for st in database] == [secret], key
        assert len(statements) - len(database) == (1 if key == "worker" else 0), key


def test_dev_has_no_database_resources_and_iam_auth(dev: Packaged) -> None:
    # GIVEN dev: database.managed false, api.auth iam
    template = dev.template
    # THEN no VPC or RDS resource would be created and the functions stay outside a VPC
    assert not condition(template, "ManagedDatabase")
    assert not exists(template, "Database") and not exists(template, "Vpc")
    assert dev.resources["WorkerLambdaFunction"]["Properties"]["VpcConfig"]["Fn::If"][0] == "ManagedDatabase"
    # AND POST /jobs needs IAM-signed requests
    route = dev.resources["HttpApiRoutePostJobs"]["Properties"]
    assert route["RouteKey"] == "POST /jobs" and route["AuthorizationType"] == "AWS_IAM"


def test_prod_has_a_private_encrypted_protected_database(prod: Packaged) -> None:
    # GIVEN prod: database.managed true
    template, db = prod.template, prod.settings.database
    resources = prod.resources
    assert condition(template, "ManagedDatabase") and condition(template, "ProtectDatabase")
    # THEN an encrypted, private, backed-up, deletion-protected MariaDB is created ...
    props = resources["Database"]["Properties"]
    assert exists(template, "Database")
    assert props["Engine"] == "mariadb" and props["StorageEncrypted"] is True
    assert props["PubliclyAccessible"] is False
    assert props["DBInstanceClass"] == db.instance_class
    assert props["BackupRetentionPeriod"] == db.backup_retention_days
    assert props["DeletionProtection"] == {"Fn::If": ["ProtectDatabase", True, False]}
    assert resources["Database"]["DeletionPolicy"] == "Snapshot"
    # ... in two private subnets of its own VPC, reachable only from the worker security group
    subnets = [r for r in resources.values() if r["Type"] == "AWS::EC2::Subnet"]
    assert len(subnets) == 2 and all(s["Properties"]["MapPublicIpOnLaunch"] is False for s in subnets)
    types = {r["Type"] for r in resources.values()}
    assert not types & {"AWS::EC2::InternetGateway", "AWS::EC2::NatGateway"}
    ingress = resources["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    sources = [(i["FromPort"], i["SourceSecurityGroupId"]) for i in ingress]
    assert sources == [(3306, {"Ref": "WorkerSecurityGroup"})]
    # ... with interface endpoints for SQS and Secrets Manager (no NAT)
    endpoints = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::EC2::VPCEndpoint"]
    assert sorted(e["ServiceName"]["Fn::Join"][1][-1] for e in endpoints) == [".secretsmanager", ".sqs"]
    assert all(e["VpcEndpointType"] == "Interface" and e["PrivateDnsEnabled"] for e in endpoints)
    # AND the worker and migrate join the VPC, with the managed policy for their network interfaces
    for key in ("Worker", "Migrate"):
        vpc = resources[f"{key}LambdaFunction"]["Properties"]["VpcConfig"]["Fn::If"]
        assert vpc[0] == "ManagedDatabase"
        assert vpc[1]["SecurityGroupIds"] == [{"Ref": "WorkerSecurityGroup"}]
        policies = resources[f"{key}IamRoleLambdaExecution"]["Properties"]["ManagedPolicyArns"]["Fn::If"]
        assert "AWSLambdaVPCAccessExecutionRole" in str(policies[1])
    # AND the secret gets the instance's host and port
    assert exists(template, "DatabaseSecretAttachment")


def test_prod_api_uses_the_configured_jwt_authorizer(prod: Packaged) -> None:
    # GIVEN prod: api.auth jwt with an issuer and audience
    api = prod.settings.api
    resources = prod.resources
    # THEN POST /jobs is guarded by a JWT authorizer with exactly those
    route = resources["HttpApiRoutePostJobs"]["Properties"]
    assert route["AuthorizationType"] == "JWT"
    authorizer = resources[route["AuthorizerId"]["Ref"]]["Properties"]
    assert authorizer["JwtConfiguration"] == {"Issuer": api.jwt_issuer, "Audience": api.jwt_audience}


def test_log_groups_have_retention(packaged: Packaged) -> None:
    # GIVEN every log group in the template
    groups = [r["Properties"] for r in packaged.resources.values() if r["Type"] == "AWS::Logs::LogGroup"]
    # THEN each one expires its logs (one per function plus the API's access log)
    assert len(groups) == 5 and all(g["RetentionInDays"] == 30 for g in groups)


def test_package_holds_the_runtime_code_and_dependencies_only(dev: Packaged) -> None:
    # GIVEN the deployment zip
    with zipfile.ZipFile(dev.directory / "sluice.zip") as archive:
        names = archive.namelist()
    tops = {n.split("/")[0] for n in names}
    # THEN it carries the handlers, the core and the runtime dependencies ...
    assert {"sluice", "enqueuer", "consumer", "worker", "pymysql", "aws_lambda_powertools", "pydantic_core",
            "yaml", "boto3"} <= tops
    assert "sluice/settings.py" in names
    # ... built for Lambda's Python (cp312, x86_64), not for this machine
    assert any(n.startswith("pydantic_core/_pydantic_core.cpython-312-x86_64-linux-gnu") for n in names)
    # ... and nothing of the CLI, the local stack, tests or tooling
    assert not any(n.startswith(("sluice_tools/", "tests/", ".sluice/", "node_modules/", "bench/", "docs/",
                                 "config/")) for n in names)
    # ... nor a module of sluice/ that the repository does not hold there (an old tooling path)
    shipped_core = {n for n in names if n.startswith("sluice/") and n.endswith(".py")}
    in_repo = {str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "sluice").rglob("*.py")}
    assert shipped_core == in_repo
    assert "serverless.yml" not in names and "pyproject.toml" not in names


def test_every_handler_imports_from_the_package_alone(dev: Packaged, tmp_path: Path) -> None:
    # GIVEN the deployment zip unpacked, as Lambda's task root would hold it
    with zipfile.ZipFile(dev.directory / "sluice.zip") as archive:
        archive.extractall(tmp_path)
    # WHEN each handler is imported with only the package and the standard library on the path
    # (-S: no site-packages of this machine), as the python3.12 runtime would
    handlers = sorted(spec.module for spec in function_table(dev.settings).values())
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); " + "; ".join(f"import {m}" for m in handlers)
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ.get("PATH", "")})
    # THEN nothing the handlers need is missing from the package
    assert done.returncode == 0, done.stderr[-2000:]


def test_lambda_requirements_equal_the_project_dependencies() -> None:
    # GIVEN the runtime dependencies pyproject.toml declares
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # WHEN reading the file serverless-python-requirements installs into the package
    lines = (PROJECT_ROOT / "requirements" / "lambda.txt").read_text().splitlines()
    listed = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    # THEN they are the same pins
    assert sorted(listed) == sorted(declared)


def test_the_local_stack_runs_what_the_template_deploys(every_stage: Packaged) -> None:
    # GIVEN the local stack built from the same settings (nothing started), lanes or not
    from sluice_tools.local.stack import LocalStack

    settings = every_stage.settings
    environment = settings.runtime_env(queue_url="q", dlq_url="d", worker_function=settings.function_name("worker"))
    local = {d.name: d for d in LocalStack(settings).function_definitions(environment)}
    deployed = {
        v["Properties"]["FunctionName"]: v["Properties"]
        for v in every_stage.resources.values() if v["Type"] == "AWS::Lambda::Function"
    }
    # THEN both run the same functions (every lane's consumer and worker), under the same names,
    # handlers and limits
    assert set(local) == set(deployed)
    assert len(local) == 2 + 2 * len(settings.resolved_lanes())
    for name, definition in local.items():
        props = deployed[name]
        assert definition.handler == props["Handler"].replace("/", "."), name
        assert (definition.timeout_s, definition.memory_mb) == (props["Timeout"], props["MemorySize"]), name
        assert definition.reserved_concurrency == props.get("ReservedConcurrentExecutions"), name
        # AND with the same environment variable names
        assert set(definition.environment) == set(props["Environment"]["Variables"]), name


# The logical ids a config without lanes deployed before lanes existed: a changed id would make
# CloudFormation replace the resource (a new queue, dropping its messages) on the next deploy.
LANELESS_IDS = {
    "AlarmEmailSubscription", "AlarmTopic", "ConsumerErrorsAlarm", "ConsumerEventsRuleSchedule1",
    "ConsumerIamRoleLambdaExecution", "ConsumerLambdaEvConf", "ConsumerLambdaFunction",
    "ConsumerLambdaPermissionEventsRuleSchedule1", "ConsumerLambdaVersion", "ConsumerLogGroup", "Database",
    "DatabaseSecret", "DatabaseSecretAttachment", "DatabaseSecurityGroup", "DatabaseSubnetGroup", "DeadLetterQueue",
    "DeadLetterQueueNotEmptyAlarm", "EndpointSecurityGroup", "EnqueuerIamRoleLambdaExecution",
    "EnqueuerLambdaFunction", "EnqueuerLambdaPermissionHttpApi", "EnqueuerLambdaVersion", "EnqueuerLogGroup",
    "HttpApi", "HttpApiIntegrationEnqueuer", "HttpApiLogGroup", "HttpApiRoutePostJobs", "HttpApiStage",
    "IamRoleLambdaExecution", "JobsQueue", "MigrateIamRoleLambdaExecution", "MigrateLambdaFunction",
    "MigrateLambdaVersion", "MigrateLogGroup", "OldestMessageAgeAlarm", "PrivateSubnetA", "PrivateSubnetB",
    "SecretsManagerEndpoint", "ServerlessDeploymentBucket", "ServerlessDeploymentBucketPolicy", "SqsEndpoint", "Vpc",
    "WorkerIamRoleLambdaExecution", "WorkerLambdaFunction", "WorkerLambdaVersion", "WorkerLogGroup",
    "WorkerSecurityGroup", "WorkerThrottlesAlarm", "WorkerToDatabaseEgress",
}
LANELESS_OUTPUTS = {
    "AlarmTopicArn", "ConsumerLambdaFunctionQualifiedArn", "DatabaseEndpoint", "DatabaseSecretArn",
    "DeadLetterQueueUrl", "EnqueuerLambdaFunctionQualifiedArn", "HttpApiId", "HttpApiUrl", "JobsQueueUrl",
    "MigrateLambdaFunctionQualifiedArn", "ServerlessDeploymentBucketName", "WorkerFunctionName",
    "WorkerLambdaFunctionQualifiedArn",
}


def test_a_config_without_lanes_keeps_todays_logical_ids(dev: Packaged) -> None:
    # GIVEN dev, a config without lanes (one consumer: one schedule)
    template = dev.template
    # WHEN reading its logical ids (a version's id ends in a hash of the code)
    ids = {k.split("LambdaVersion")[0] + "LambdaVersion" if "LambdaVersion" in k else k for k in template["Resources"]}
    # THEN they are exactly the ones it had before lanes, so an existing stack is updated in place
    assert ids == LANELESS_IDS
    assert set(template["Outputs"]) == LANELESS_OUTPUTS
