"""What the local Lambda endpoint says about its functions, in Lambda's own JSON shapes.

``aws lambda list-functions``, ``get-function`` and ``get-function-configuration`` (and boto3's
``list_functions`` / ``get_function`` / ``get_function_configuration``) read these replies, so the
field names and types follow the ``FunctionConfiguration``, ``GetFunctionResponse`` and
``ListFunctionsResponse`` shapes of botocore's Lambda service model (2015-03-31). What a local
function has no real value for says so plainly: the role is a placeholder ARN, the code has no
size or hash (it runs from the work tree), and ``LastModified`` is when the endpoint started.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sluice_tools.local.runtime_api import ACCOUNT_ID, FunctionDefinition

RUNTIME = "python3.12"  # the runtime serverless.yml deploys (provider.runtime)
# ListFunctions' MaxItems bounds (AWS: 1..10000, default 50 per page).
MAX_ITEMS_DEFAULT = 50
MAX_ITEMS_LIMIT = 10_000


def lambda_timestamp(moment: datetime) -> str:
    """Lambda's LastModified format: ``2024-05-01T12:00:00.000+0000``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}" + moment.strftime("%z")


def handler_string(definition: FunctionDefinition) -> str:
    """The handler as serverless.yml writes it (``enqueuer/handler.lambda_handler``)."""
    module, _, attribute = definition.handler.rpartition(".")
    return f"{module.replace('.', '/')}.{attribute}" if module else definition.handler


def function_configuration(definition: FunctionDefinition, region: str, last_modified: datetime) -> dict[str, Any]:
    """One ``FunctionConfiguration``: what GetFunctionConfiguration returns and ListFunctions lists."""
    return {
        "FunctionName": definition.name,
        "FunctionArn": definition.arn(region),
        "Runtime": RUNTIME,
        "Role": f"arn:aws:iam::{ACCOUNT_ID}:role/{definition.name}-local",  # no IAM locally: a placeholder
        "Handler": handler_string(definition),
        "CodeSize": 0,
        "Description": "",
        "Timeout": definition.timeout_s,
        "MemorySize": definition.memory_mb,
        "LastModified": lambda_timestamp(last_modified),
        "CodeSha256": "",
        "Version": "$LATEST",
        "Environment": {"Variables": dict(definition.environment)},
        "TracingConfig": {"Mode": "PassThrough"},
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": {"Size": 512},
    }


def get_function(definition: FunctionDefinition, region: str, last_modified: datetime) -> dict[str, Any]:
    """A ``GetFunctionResponse``: the configuration and, when reserved, the function's concurrency."""
    reply: dict[str, Any] = {"Configuration": function_configuration(definition, region, last_modified)}
    if definition.reserved_concurrency is not None:
        reply["Concurrency"] = {"ReservedConcurrentExecutions": definition.reserved_concurrency}
    return reply


class ListFunctionsError(ValueError):
    """A ListFunctions parameter is out of range; the message names it."""


def list_functions(definitions: list[FunctionDefinition], region: str, last_modified: datetime,
                   marker: str | None, max_items: str | None) -> dict[str, Any]:
    """A ``ListFunctionsResponse`` page, in name order. ``Marker`` is opaque to callers: here it is
    the index of the page's first function (botocore's paginator hands back ``NextMarker`` as is)."""
    try:
        start = int(marker) if marker else 0
        size = int(max_items) if max_items else MAX_ITEMS_DEFAULT
    except ValueError:
        raise ListFunctionsError("Marker and MaxItems must be the values ListFunctions returned / a number") from None
    if not 1 <= size <= MAX_ITEMS_LIMIT:
        raise ListFunctionsError(f"MaxItems must be within 1..{MAX_ITEMS_LIMIT}")
    if start < 0:
        raise ListFunctionsError("Marker is not one ListFunctions returned")
    ordered = sorted(definitions, key=lambda d: d.name)
    page = ordered[start:start + size]
    reply: dict[str, Any] = {"Functions": [function_configuration(d, region, last_modified) for d in page]}
    if start + size < len(ordered):
        reply["NextMarker"] = str(start + size)
    return reply
