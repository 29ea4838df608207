"""The local stack's pieces, each against the real thing: fauxqs and moto servers, the queues
made from config/local.yml, a private mariadbd, and the HTTP API in front of a real function
process served by the local Lambda service."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pymysql
import pytest

from sluice.settings import load_settings
from sluice_tools.local.env import LocalStackNotRunningError, read_local_env, write_local_env
from sluice_tools.local.fauxqs import FauxqsServer
from sluice_tools.local.http_api import MAX_BODY_BYTES, HttpApi, lambda_invoker
from sluice_tools.local.lambda_service import FunctionDefinition, LambdaService
from sluice_tools.local.mariadb import PrivateMariaDB, answers, ensure_database
from sluice_tools.local.moto_server import MotoServer
from sluice_tools.local.processes import LocalServiceError, is_listening
from sluice_tools.local.resources import create_db_secret, create_queues
from sluice_tools.local.scheduler import scheduled_event
from tests.fixtures.events import HTTP_API, SCHEDULED, load_event

pytestmark = pytest.mark.e2e

REGION = "us-east-1"
HERE = Path(__file__).parent


def listening_addresses(port: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


@pytest.fixture(params=["fauxqs", "moto"])
def sqs_endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    server = FauxqsServer(log_path=tmp_path / "fauxqs.log") if request.param == "fauxqs" else MotoServer()
    url = server.start()
    yield url
    server.stop()


def test_fauxqs_serves_loopback_only_and_stops(tmp_path: Path) -> None:
    # GIVEN a fauxqs server started on a free port
    server = FauxqsServer(log_path=tmp_path / "fauxqs.log")
    server.start()
    try:
        # THEN it listens on 127.0.0.1 and nowhere else
        assert listening_addresses(server.port) == [f"127.0.0.1:{server.port}"]
    finally:
        # WHEN it is stopped
        server.stop()
    # THEN nothing listens there any more and its process is gone
    assert not is_listening(server.port)
    assert not server.alive()


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    # GIVEN a port something already listens on
    first = FauxqsServer(log_path=tmp_path / "a.log")
    first.start()
    try:
        # WHEN a second server is asked for that port THEN the error names the port
        with pytest.raises(LocalServiceError, match=str(first.port)):
            FauxqsServer(port=first.port, log_path=tmp_path / "b.log").start()
    finally:
        first.stop()


def test_create_queues_matches_the_config(sqs_endpoint: str) -> None:
    # GIVEN the local settings and an SQS server
    settings = load_settings("local")
    sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name=REGION)
    # WHEN the queues are created (twice: the stack restarts against a running server)
    urls = create_queues(sqs, settings)
    again = create_queues(sqs, settings)
    # THEN they are the same FIFO queues, with the deployment's attributes and redrive policy
    assert again == urls
    attrs = sqs.get_queue_attributes(QueueUrl=urls.url, AttributeNames=["All"])["Attributes"]
    assert attrs["FifoQueue"] == "true"
    assert attrs["VisibilityTimeout"] == str(settings.queue.visibility_s)
    assert attrs["MessageRetentionPeriod"] == str(settings.queue.retention_s)
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == urls.dlq_arn
    assert int(redrive["maxReceiveCount"]) == settings.queue.max_receive_count
    dlq = sqs.get_queue_attributes(QueueUrl=urls.dlq_url, AttributeNames=["All"])["Attributes"]
    assert dlq["FifoQueue"] == "true"
    assert dlq["MessageRetentionPeriod"] == str(settings.queue.dlq_retention_days * 86400)


def test_db_secret_has_the_rds_shape(tmp_path: Path) -> None:
    # GIVEN a moto server and the local settings
    moto = MotoServer()
    moto.start()
    try:
        secrets = boto3.client("secretsmanager", endpoint_url=moto.url, region_name=REGION)
        settings = load_settings("local")
        # WHEN the stack stores its database URL, then stores it again on a restart
        create_db_secret(secrets, settings, "mysql://app:s%40cret@127.0.0.1:3307/sluice")
        create_db_secret(secrets, settings, "mysql://app:s%40cret@127.0.0.1:3308/sluice")
        # THEN the secret holds the RDS JSON fields, with the latest value
        value = json.loads(secrets.get_secret_value(SecretId=settings.database.secret)["SecretString"])
        assert value == {"engine": "mariadb", "host": "127.0.0.1", "port": 3308, "username": "app",
                         "password": "s@cret", "dbname": "sluice"}
    finally:
        moto.stop()


def test_private_mariadb_restarts_with_its_data(tmp_path: Path) -> None:
    # GIVEN a private mariadbd with a row written
    server = PrivateMariaDB(tmp_path / "mariadb")
    url = server.start().with_database("kept")
    try:
        ensure_database(url)
        conn = pymysql.connect(host=url.host, port=url.port, user="root", database="kept", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
            cur.execute("INSERT INTO t VALUES (7)")
        conn.close()
        # WHEN it is killed like a crash, then started again
        server.kill()
        assert not answers(url)
        again = server.start()
        # THEN it answers on the same port with the same data
        assert again.port == url.port
        conn = pymysql.connect(host=url.host, port=url.port, user="root", database="kept")
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM t")
            assert cur.fetchall() == ((7,),)
        conn.close()
        assert listening_addresses(url.port) == [f"127.0.0.1:{url.port}"]
    finally:
        server.stop()
    assert not server.alive()


def test_local_env_round_trip_and_absence(tmp_path: Path) -> None:
    # GIVEN no env file WHEN read THEN the error says how to start the stack
    path = tmp_path / ".sluice" / "local.env"
    with pytest.raises(LocalStackNotRunningError, match="sluice local up"):
        read_local_env(path)
    # WHEN written THEN it reads back the same, known keys first
    values = {"ZZ_EXTRA": "1", "SLUICE_API_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL": "http://x"}
    write_local_env(values, path)
    assert read_local_env(path) == values
    assert path.read_text().splitlines()[1].startswith("AWS_ENDPOINT_URL=")


@pytest.fixture(scope="module")
def toy_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpApi]:
    logs = tmp_path_factory.mktemp("lambda-logs")
    service = LambdaService([FunctionDefinition(name="toy", handler="toy_api.handler", timeout_s=10,
                                                cwd=str(HERE))], log_dir=logs)
    service.start()
    api = HttpApi(lambda_invoker("toy", service.url, 10, REGION), openapi_path=HERE / "toy_api.py")
    api.start()
    yield api
    api.stop()
    service.stop()


def request(url: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def test_http_api_sends_a_v2_event_and_maps_the_response(toy_api: HttpApi) -> None:
    # WHEN a JSON body is POSTed to /jobs with a query string and a mixed-case header
    status, headers, body = request(f"{toy_api.url}/jobs?a=1&a=2", "POST", b'{"items": []}',
                                    {"Content-Type": "application/json", "X-Trace": "t1"})
    # THEN the function got a payload-v2.0 event and its statusCode/headers/body came back
    assert status == 201
    assert headers["x-toy"] == "yes"
    reply = json.loads(body)
    event = reply["event"]
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /jobs"
    assert event["rawPath"] == "/jobs"
    assert event["rawQueryString"] == "a=1&a=2"
    assert event["queryStringParameters"] == {"a": "1,2"}
    assert event["headers"]["x-trace"] == "t1"
    assert event["body"] == '{"items": []}' and event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert ctx["http"]["method"] == "POST" and ctx["http"]["path"] == "/jobs"
    assert ctx["http"]["sourceIp"] == "127.0.0.1"
    assert ctx["requestId"] and ctx["timeEpoch"] > 0
    assert 0 < reply["remaining_ms"] <= 10_000


def test_http_api_events_have_the_keys_of_aws_sample(toy_api: HttpApi) -> None:
    # GIVEN AWS's HTTP API sample event (sam local generate-event apigateway http-api-proxy)
    sample = load_event(HTTP_API)
    # WHEN a request with a query string, cookies and a JSON body goes through the local HTTP API
    status, _, body = request(f"{toy_api.url}/jobs?a=1", "POST", b'{"items": []}',
                              {"Content-Type": "application/json", "Cookie": "c1=1; c2=2"})
    assert status == 201
    event = json.loads(body)["event"]
    # THEN the function's event has the sample's keys at every level, less only what AWS itself
    # leaves out here: pathParameters (the route has none), stageVariables (the stage has none),
    # authentication (no mutual TLS) and authorizer (no authorizer on the route)
    assert set(event) == set(sample) - {"pathParameters", "stageVariables"}
    assert set(event["requestContext"]) == set(sample["requestContext"]) - {"authentication", "authorizer"}
    assert set(event["requestContext"]["http"]) == set(sample["requestContext"]["http"])
    assert event["cookies"] == ["c1=1", "c2=2"]
    # AND the values AWS fixes for the $default stage are the sample's
    assert (event["version"], event["requestContext"]["stage"]) == (sample["version"],
                                                                    sample["requestContext"]["stage"])


def test_scheduler_events_have_the_keys_of_aws_sample() -> None:
    # GIVEN AWS's scheduled-event sample (sam local generate-event cloudwatch scheduled-event)
    sample = load_event(SCHEDULED)
    rule_arn = f"arn:aws:events:{REGION}:123456789012:rule/sluice-local-consumer"
    # WHEN the local scheduler makes its event for one tick
    event = scheduled_event(rule_arn, REGION)
    # THEN it has the sample's keys plus "version", which EventBridge sends and the sample omits,
    # and the same fixed values
    assert set(event) == set(sample) | {"version"}
    assert event["version"] == "0"
    assert (event["source"], event["detail-type"], event["detail"]) == (sample["source"],
                                                                        sample["detail-type"], sample["detail"])
    assert (event["resources"], event["region"]) == ([rule_arn], REGION)
    assert len(event["time"]) == len(sample["time"]) and event["time"].endswith("Z")


def test_http_api_other_routes_binary_bodies_and_plain_results(toy_api: HttpApi) -> None:
    # WHEN a binary body goes to another route THEN it is $default, base64-encoded
    status, _, body = request(f"{toy_api.url}/other", "PUT", b"\xff\x00",
                              {"Content-Type": "application/octet-stream"})
    assert status == 404
    event = json.loads(body)["event"]
    assert event["routeKey"] == "$default" and event["isBase64Encoded"] is True and event["body"] == "/wA="
    # WHEN the function returns a bare JSON value THEN it is a 200 with that JSON
    status, headers, body = request(f"{toy_api.url}/plain")
    assert (status, json.loads(body)) == (200, {"plain": True})
    assert headers["content-type"] == "application/json"


def test_http_api_function_error_is_502_and_it_keeps_serving(toy_api: HttpApi) -> None:
    # WHEN the function raises THEN the client gets API Gateway's 502
    status, _, body = request(f"{toy_api.url}/boom", "POST", b"{}")
    assert status == 502 and json.loads(body) == {"message": "Internal Server Error"}
    # AND the next request is served normally
    assert request(f"{toy_api.url}/jobs", "POST", b"{}")[0] == 201


def test_http_api_rejects_bodies_over_10_mb(toy_api: HttpApi) -> None:
    # WHEN a body just over API Gateway's limit is sent THEN 413, and the function is never called
    status, _, _ = request(f"{toy_api.url}/jobs", "POST", b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413


def test_http_api_serves_the_openapi_document(toy_api: HttpApi) -> None:
    # WHEN the document is asked for THEN its bytes come back as YAML
    status, headers, body = request(f"{toy_api.url}/openapi.yaml")
    assert status == 200 and headers["content-type"] == "application/yaml"
    assert body == (HERE / "toy_api.py").read_bytes()
