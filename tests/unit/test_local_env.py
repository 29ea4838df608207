"""use_local_stack: the one function that points a process's AWS clients at the local stack."""

from __future__ import annotations

import os
from collections.abc import Iterator

import boto3
import pytest

from sluice import aws
from sluice_tools.local.env import (
    DUMMY_ACCESS_KEY_ID,
    ENDPOINT_ENV_KEYS,
    EXPORTED_ENV_KEYS,
    restore_environment,
    use_local_stack,
)

pytestmark = pytest.mark.unit

# A local.env as the stack writes it: each endpoint on its own port, so a mix-up shows.
STACK_ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:4001",
    "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:4002",
    "AWS_ENDPOINT_URL_LAMBDA": "http://127.0.0.1:4003",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://127.0.0.1:4004",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "SLUICE_QUEUE_URL": "http://127.0.0.1:4002/000000000000/q.fifo",
}


@pytest.fixture
def environment() -> Iterator[None]:
    """Every variable use_local_stack touches starts unset here and is put back afterwards."""
    # Saved by hand: monkeypatch.delenv of an unset variable would not remove what the test sets.
    saved = {key: os.environ.pop(key, None) for key in EXPORTED_ENV_KEYS}
    aws.reset_clients()
    yield
    restore_environment(saved)


def test_every_endpoint_is_exported_and_clients_made_afterwards_use_them(environment: None) -> None:
    # GIVEN a process whose cached SQS client talks to another server, with a real-looking session
    os.environ["AWS_ENDPOINT_URL_SQS"] = "http://127.0.0.1:9999"
    os.environ.update(AWS_ACCESS_KEY_ID="AKIAREAL", AWS_SECRET_ACCESS_KEY="real", AWS_SESSION_TOKEN="token",
                      AWS_DEFAULT_REGION="us-east-1")
    assert aws.client("sqs").meta.endpoint_url == "http://127.0.0.1:9999"
    # WHEN it is pointed at the local stack
    use_local_stack(STACK_ENV)
    # THEN every endpoint key, the region and the stack's credentials are in the environment
    for key in ENDPOINT_ENV_KEYS:
        assert os.environ[key] == STACK_ENV[key], key
    assert "AWS_SESSION_TOKEN" not in os.environ
    assert "SLUICE_QUEUE_URL" not in os.environ  # only what boto3 reads is exported
    # AND sluice's clients and plain boto3 clients made afterwards reach the stack's servers
    assert aws.client("sqs").meta.endpoint_url == STACK_ENV["AWS_ENDPOINT_URL_SQS"]
    assert aws.client("lambda").meta.endpoint_url == STACK_ENV["AWS_ENDPOINT_URL_LAMBDA"]
    secrets = boto3.client("secretsmanager")  # how Powertools' get_secret makes its client
    assert secrets.meta.endpoint_url == STACK_ENV["AWS_ENDPOINT_URL_SECRETS_MANAGER"]
    assert boto3.client("sts").meta.endpoint_url == STACK_ENV["AWS_ENDPOINT_URL"]  # the general one
    assert secrets.meta.region_name == "eu-west-1"
    credentials = boto3.Session().get_credentials()
    assert credentials is not None
    assert (credentials.access_key, credentials.token) == ("local", None)


def test_an_endpoint_the_stack_does_not_name_falls_back_to_the_general_one(environment: None) -> None:
    # GIVEN a process left pointing at another stack's Secrets Manager, and a local.env that names
    # only the general endpoint and no credentials or region
    os.environ["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = "http://127.0.0.1:9998"
    # WHEN it is pointed at the local stack
    use_local_stack({"AWS_ENDPOINT_URL": "http://127.0.0.1:4001"}, default_region="ap-south-1")
    # THEN the stale endpoint is gone, so Secrets Manager reaches the general endpoint
    assert "AWS_ENDPOINT_URL_SECRETS_MANAGER" not in os.environ
    assert boto3.client("secretsmanager").meta.endpoint_url == "http://127.0.0.1:4001"
    # AND dummy credentials and the default region fill what the file lacks
    assert os.environ["AWS_ACCESS_KEY_ID"] == DUMMY_ACCESS_KEY_ID
    assert os.environ["AWS_DEFAULT_REGION"] == "ap-south-1"


def test_a_region_the_process_has_is_kept_when_the_stack_names_none(environment: None) -> None:
    # GIVEN a process with a region / WHEN pointed at a stack whose file names none
    os.environ["AWS_DEFAULT_REGION"] = "us-west-2"
    use_local_stack({"AWS_ENDPOINT_URL": "http://127.0.0.1:4001"}, default_region="ap-south-1")
    # THEN the process's region stays
    assert os.environ["AWS_DEFAULT_REGION"] == "us-west-2"


def test_restore_puts_the_process_back(environment: None) -> None:
    # GIVEN a process with its own endpoint and session
    os.environ.update(AWS_ENDPOINT_URL="http://127.0.0.1:9997", AWS_SESSION_TOKEN="token",
                      AWS_DEFAULT_REGION="us-east-1")
    before = {key: os.environ.get(key) for key in EXPORTED_ENV_KEYS}
    # WHEN pointed at the stack and then restored
    previous = use_local_stack(STACK_ENV)
    assert aws.client("sqs").meta.endpoint_url == STACK_ENV["AWS_ENDPOINT_URL_SQS"]
    restore_environment(previous)
    # THEN every variable is as it was, and new clients reach the process's own endpoint again
    assert {key: os.environ.get(key) for key in EXPORTED_ENV_KEYS} == before
    assert aws.client("sqs").meta.endpoint_url == "http://127.0.0.1:9997"
