"""The local Lambda service through real boto3: warm awslambdaric processes behind Lambda's Invoke API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sluice_tools.local.lambda_service import FunctionDefinition, LambdaService, LambdaServiceError
from sluice_tools.local.stack import pid_alive
from tests.helpers import eventually

pytestmark = pytest.mark.functional

FIXTURES = str(Path(__file__).parent / "lambda_fixtures")


def definition(name: str, handler: str, **kw: Any) -> FunctionDefinition:
    return FunctionDefinition(name=name, handler=f"toy.{handler}", cwd=FIXTURES, **kw)


FUNCTIONS = [
    definition("echo", "echo", timeout_s=3, memory_mb=256, environment={"TOY_SETTING": "from-definition"}),
    definition("warm", "echo"),
    definition("fail", "fail"),
    definition("slow", "sleep", timeout_s=1),
    definition("victim", "sleep", timeout_s=30),
    definition("capped", "sleep", timeout_s=10, reserved_concurrency=2),
    definition("writer", "write_file"),
    FunctionDefinition(name="broken", handler="no_such_module.handler", cwd=FIXTURES),
]


def wait_for(check: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    return eventually(check, timeout_s, what, poll_s=0.02)


def lambda_client(url: str) -> Any:
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 0}, read_timeout=60))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LambdaService]:
    with LambdaService(FUNCTIONS, log_dir=tmp_path_factory.mktemp("lambda-logs")) as svc:
        yield svc


@pytest.fixture(scope="module")
def lam(service: LambdaService) -> Any:
    return lambda_client(service.url)


def invoke(lam: Any, name: str, payload: Any, **kw: Any) -> tuple[dict[str, Any], Any]:
    reply = lam.invoke(FunctionName=name, Payload=json.dumps(payload).encode(), **kw)
    return reply, json.loads(reply["Payload"].read() or b"null")


def test_echo_gets_event_context_and_lambda_environment(lam: Any) -> None:
    # GIVEN the echo function (timeout 3 s, 256 MB, one variable of its own)
    # WHEN it is invoked synchronously
    reply, body = invoke(lam, "echo", {"hello": "world"})
    # THEN the handler saw the event, a real LambdaContext and the variables Lambda sets
    assert reply["StatusCode"] == 200 and "FunctionError" not in reply
    assert body["event"] == {"hello": "world"}
    assert body["function_name"] == "echo"
    assert body["memory_limit_in_mb"] == "256"
    assert body["invoked_function_arn"].endswith(":function:echo")
    assert body["aws_request_id"] == reply["ResponseMetadata"]["RequestId"]
    assert 0 < body["remaining_ms"] <= 3000
    assert body["env"] == {"AWS_LAMBDA_FUNCTION_NAME": "echo", "AWS_LAMBDA_FUNCTION_TIMEOUT": "3",
                           "AWS_REGION": "us-east-1", "_HANDLER": "toy.echo",
                           "TOY_SETTING": "from-definition"}


def test_warm_process_is_reused(service: LambdaService, lam: Any) -> None:
    # GIVEN a function invoked once
    _, first = invoke(lam, "warm", {"n": 1})
    # WHEN it is invoked again
    _, second = invoke(lam, "warm", {"n": 2})
    # THEN the same process served both, started once
    assert first["pid"] == second["pid"]
    stats = service.stats()["warm"]
    assert stats.pids == [first["pid"]] and stats.cold_starts == 1 and stats.invocations == 2


def test_raised_exception_is_an_unhandled_function_error(lam: Any) -> None:
    # GIVEN a handler that raises
    # WHEN it is invoked
    reply, body = invoke(lam, "fail", {"item": "INV-1"})
    # THEN Lambda's error shape comes back with status 200 and FunctionError
    assert reply["StatusCode"] == 200 and reply["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ToyBusinessError"
    assert body["errorMessage"] == "cannot process INV-1"
    assert any("toy.py" in line for line in body["stackTrace"])


def test_import_failure_is_reported_as_init_error(lam: Any) -> None:
    # GIVEN a function whose handler module does not exist
    # WHEN it is invoked
    reply, body = invoke(lam, "broken", {})
    # THEN the init error reaches the caller as Lambda reports it
    assert reply["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module" in body["errorMessage"]


def test_timeout_kills_the_process_and_the_next_invoke_works(service: LambdaService, lam: Any) -> None:
    # GIVEN a function with a 1 s timeout, warm
    _, warm = invoke(lam, "slow", {"seconds": 0})
    # WHEN an invoke runs past its timeout
    started = time.monotonic()
    reply, body = invoke(lam, "slow", {"seconds": 5})
    elapsed = time.monotonic() - started
    # THEN the caller gets the timeout error at the deadline, and the process is gone
    assert reply["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert body["errorMessage"].endswith("Task timed out after 1.00 seconds")
    assert 0.9 < elapsed < 4
    wait_for(lambda: not pid_alive(warm["pid"]), what="timed-out process to exit")
    # AND the next invoke succeeds in a fresh process
    reply, body = invoke(lam, "slow", {"seconds": 0})
    assert "FunctionError" not in reply and body["pid"] != warm["pid"]
    assert service.stats()["slow"].timeouts == 1


def test_kill_9_mid_invoke_is_an_exit_error_and_is_replaced(service: LambdaService, lam: Any) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        # GIVEN an invoke in progress
        running: Future[tuple[dict[str, Any], Any]] = pool.submit(invoke, lam, "victim", {"seconds": 25})
        pids = wait_for(lambda: service.stats()["victim"].busy == 1 and service.stats()["victim"].pids,
                        what="victim process")
        # WHEN its process is killed with SIGKILL
        os.kill(pids[0], signal.SIGKILL)
        reply, body = running.result(timeout=10)
    # THEN the caller gets Runtime.ExitError
    assert reply["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert "signal: killed" in body["errorMessage"]
    # AND the next invoke runs in a new process
    reply, body = invoke(lam, "victim", {"seconds": 0})
    assert "FunctionError" not in reply and body["pid"] != pids[0]
    assert service.stats()["victim"].pids == [body["pid"]]


def test_above_reserved_concurrency_sync_throttles_events_queue(service: LambdaService, lam: Any) -> None:
    # GIVEN a function with reserved concurrency 2, both slots busy with Event invokes
    for _ in range(2):
        assert lam.invoke(FunctionName="capped", InvocationType="Event",
                          Payload=b'{"seconds": 2}')["StatusCode"] == 202
    wait_for(lambda: service.stats()["capped"].busy == 2, what="two busy slots")
    # WHEN a third synchronous invoke arrives
    with pytest.raises(ClientError) as raised:
        lam.invoke(FunctionName="capped", Payload=b'{"seconds": 0}')
    # THEN it is throttled as Lambda does it
    error = raised.value.response
    assert error["Error"]["Code"] == "TooManyRequestsException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    # AND a third Event invoke is queued, not dropped, and runs once a slot frees
    queued = lam.invoke(FunctionName="capped", InvocationType="Event", Payload=b'{"seconds": 0}')
    assert queued["StatusCode"] == 202
    assert service.stats()["capped"].async_queued == 1
    stats = wait_for(lambda: (s := service.stats()["capped"]).invocations == 3 and s.busy == 0 and s,
                     what="queued event to run")
    assert stats.peak_busy == 2 and stats.throttles == 1 and stats.async_queued == 0


def test_event_invoke_returns_202_and_runs_in_background(lam: Any, tmp_path: Path) -> None:
    # GIVEN a handler with a side effect
    target = tmp_path / "effect.txt"
    # WHEN it is invoked with InvocationType Event
    reply = lam.invoke(FunctionName="writer", InvocationType="Event",
                       Payload=json.dumps({"path": str(target), "text": "done"}).encode())
    # THEN the call is accepted at once and the effect shows up
    assert reply["StatusCode"] == 202
    wait_for(target.exists, what="the handler's file")
    assert target.read_text() == "done"


def test_unknown_function_bad_payload_and_dry_run(lam: Any) -> None:
    # GIVEN the running service
    # WHEN an unknown function is invoked THEN Lambda's 404 comes back
    with pytest.raises(ClientError) as raised:
        lam.invoke(FunctionName="nope", Payload=b"{}")
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # WHEN the payload is not JSON THEN a 400 says so
    with pytest.raises(ClientError) as raised:
        lam.invoke(FunctionName="echo", Payload=b"{not json")
    assert raised.value.response["Error"]["Code"] == "InvalidRequestContentException"
    # WHEN a DryRun is asked for a known function (by ARN) THEN 204 and nothing runs
    arn = "arn:aws:lambda:us-east-1:123456789012:function:echo"
    assert lam.invoke(FunctionName=arn, InvocationType="DryRun")["StatusCode"] == 204


def test_stats_endpoint_and_reset(service: LambdaService, lam: Any) -> None:
    # GIVEN an invoked function
    _, body = invoke(lam, "warm", {"n": 3})
    # WHEN the stats endpoint is read
    with urllib.request.urlopen(f"{service.url}/sluice/stats", timeout=5) as response:
        stats = json.load(response)
    # THEN it reports the function's counters and process ids
    assert body["pid"] in stats["warm"]["pids"] and stats["warm"]["invocations"] >= 1
    assert set(stats) == {f.name for f in FUNCTIONS}
    # WHEN the counters are reset THEN they start again from zero
    request = urllib.request.Request(f"{service.url}/sluice/stats/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    after = service.stats()["warm"]
    assert after.invocations == 0 and after.peak_busy == 0 and after.pids == [body["pid"]]


def test_stop_leaves_no_function_processes(tmp_path: Path) -> None:
    # GIVEN a service with warm processes and one busy in an invoke
    functions = [definition("a", "sleep", timeout_s=30), definition("b", "echo")]
    svc = LambdaService(functions, log_dir=tmp_path).start()
    lam = lambda_client(svc.url)
    invoke(lam, "b", {})
    lam.invoke(FunctionName="a", InvocationType="Event", Payload=b'{"seconds": 25}')
    def both_pids() -> list[int]:
        pids = [pid for s in svc.stats().values() for pid in s.pids]
        return pids if len(pids) == 2 and svc.stats()["a"].busy == 1 else []

    pids = wait_for(both_pids, what="two function processes")
    # WHEN it stops
    svc.stop()
    # THEN every function process is gone
    assert not [pid for pid in pids if pid_alive(pid)]


def test_module_entry_serves_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    # GIVEN the service run as its own process from a spec file
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"log_dir": str(tmp_path / "logs"), "functions": [
        {"name": "echo", "handler": "toy.echo", "timeout_s": 3, "cwd": FIXTURES}]}))
    ready = tmp_path / "url"
    proc = subprocess.Popen([sys.executable, "-m", "sluice_tools.local.lambda_service", "--spec", str(spec),
                             "--ready-file", str(ready)], stdout=subprocess.DEVNULL)
    try:
        url = wait_for(lambda: ready.exists() and ready.read_text(), what="service ready file")
        _, body = invoke(lambda_client(url), "echo", {"via": "module"})
        assert body["event"] == {"via": "module"}
        # WHEN it gets SIGTERM
        proc.send_signal(signal.SIGTERM)
        # THEN it exits cleanly, takes its function process with it, and the function logged to its file
        assert proc.wait(timeout=10) == 0
        assert not pid_alive(body["pid"])
        log = (tmp_path / "logs" / "echo.log").read_text()
        assert "echo handling {'via': 'module'}" in log and "REPORT RequestId" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_spec_is_a_clear_error(tmp_path: Path) -> None:
    # GIVEN a spec with a function missing its handler
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"functions": [{"name": "x"}]}))
    # WHEN the module entry is run on it
    done = subprocess.run([sys.executable, "-m", "sluice_tools.local.lambda_service", "--spec", str(spec)],
                          capture_output=True, text=True, timeout=30)
    # THEN it exits 2 with a message, not a traceback
    assert done.returncode == 2
    assert "needs 'name' and 'handler'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("bad", "reason"), [
    ({"environment": {"N": 1}}, "must be strings"),
    ({"cwd": "no/such/dir"}, "is not a directory"),
    ({"timeout_s": 0}, "timeout_s must be positive"),
])
def test_bad_definitions_are_rejected_before_anything_starts(bad: dict[str, Any], reason: str,
                                                             tmp_path: Path) -> None:
    # GIVEN a definition with one bad field
    fields: dict[str, Any] = {"name": "f", "handler": "toy.echo", "cwd": FIXTURES, **bad}
    # WHEN a service is built from it
    # THEN it is refused with the reason
    with pytest.raises(LambdaServiceError, match=reason):
        LambdaService([FunctionDefinition(**fields)], log_dir=tmp_path)


# -- what the aws CLI asks about functions (ListFunctions, GetFunction, GetFunctionConfiguration) --

def test_list_and_get_functions_answer_in_lambdas_shapes(lam: Any) -> None:
    # GIVEN the running service
    # WHEN boto3 lists the functions, a page of 3 at a time (botocore parses each reply by the model)
    pages = list(lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 3}))
    listed = {f["FunctionName"]: f for page in pages for f in page["Functions"]}
    # THEN every function is there once, with its definition's numbers
    assert len(pages) == 3 and sorted(listed) == sorted(f.name for f in FUNCTIONS)
    echo = listed["echo"]
    assert (echo["Handler"], echo["Runtime"], echo["Timeout"], echo["MemorySize"]) == ("toy.echo", "python3.12", 3, 256)
    assert echo["FunctionArn"] == "arn:aws:lambda:us-east-1:123456789012:function:echo"
    assert echo["Environment"]["Variables"] == {"TOY_SETTING": "from-definition"}
    assert echo["State"] == "Active" and echo["Role"].startswith("arn:aws:iam::123456789012:role/")
    assert echo["LastModified"].endswith("+0000")
    # WHEN one function is asked for, by name and by ARN
    config = lam.get_function_configuration(FunctionName="capped")
    whole = lam.get_function(FunctionName="arn:aws:lambda:us-east-1:123456789012:function:capped")
    # THEN its configuration, and GetFunction's reserved concurrency (absent for an unreserved one)
    assert config["FunctionName"] == "capped" and config["Timeout"] == 10
    assert whole["Configuration"]["FunctionArn"] == config["FunctionArn"]
    assert whole["Concurrency"] == {"ReservedConcurrentExecutions": 2}
    assert "Concurrency" not in lam.get_function(FunctionName="echo")


def test_unknown_function_is_lambdas_404(lam: Any) -> None:
    # GIVEN the running service
    for call in (lam.get_function, lam.get_function_configuration):
        # WHEN a function it does not run, or a version it does not have, is asked for
        for kwargs in ({"FunctionName": "nope"}, {"FunctionName": "echo", "Qualifier": "7"}):
            with pytest.raises(ClientError) as raised:
                call(**kwargs)
            # THEN Lambda's ResourceNotFoundException, 404, naming the function
            error = raised.value.response
            assert error["Error"]["Code"] == "ResourceNotFoundException"
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 404
            assert "function:" in error["Error"]["Message"]
    # WHEN a page size out of range is asked for THEN a 400, not a crash
    with pytest.raises(ClientError) as raised:
        lam.list_functions(MaxItems=10001)
    assert raised.value.response["Error"]["Code"] == "InvalidParameterValueException"


@pytest.mark.skipif(shutil.which("aws") is None,
                    reason="the aws CLI is not installed (pip install awscli in an environment of its own: "
                           "it pins botocore, which the project's boto3 pins too)")
def test_aws_cli_lists_and_gets_functions(service: LambdaService) -> None:
    # GIVEN the aws CLI pointed at the service with dummy credentials
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_LAMBDA": service.url, "AWS_PAGER": ""}
    env.pop("AWS_PROFILE", None)

    def aws(*args: str) -> Any:
        done = subprocess.run(["aws", "lambda", *args, "--endpoint-url", service.url, "--output", "json"],
                              env=env, capture_output=True, text=True, timeout=60, check=False)
        return done.returncode, done.stdout, done.stderr

    # WHEN it lists the functions and gets one THEN it parses both
    code, out, err = aws("list-functions")
    assert code == 0, err
    assert sorted(f["FunctionName"] for f in json.loads(out)["Functions"]) == sorted(f.name for f in FUNCTIONS)
    code, out, err = aws("get-function", "--function-name", "capped")
    assert code == 0, err
    assert json.loads(out)["Concurrency"]["ReservedConcurrentExecutions"] == 2
    code, out, err = aws("get-function-configuration", "--function-name", "echo")
    assert code == 0 and json.loads(out)["MemorySize"] == 256, err
    # WHEN it asks for an unknown function THEN it reports Lambda's error and fails
    code, _, err = aws("get-function", "--function-name", "nope")
    assert code != 0 and "ResourceNotFoundException" in err
