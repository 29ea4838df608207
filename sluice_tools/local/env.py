"""`.sluice/local.env`: where a running local stack says how to reach it.

`sluice local up` writes it once every service answers; the operator CLI, the tests, curl,
the aws CLI and the mysql client read it (``set -a; . .sluice/local.env``) so they all reach
the same stack. The file is plain ``KEY=value`` lines, shell-sourceable, values never quoted
(none of them contains spaces).

Queues: a config without lanes has one queue, ``SLUICE_QUEUE_URL`` and ``SLUICE_DLQ_URL``, as
always. A config with lanes has no single queue, so instead every lane has its pair,
``SLUICE_QUEUE_URL_<LANE>`` and ``SLUICE_DLQ_URL_<LANE>`` (``lane_queue_keys``: the lane's name
upper-cased with ``-`` as ``_``, e.g. ``SLUICE_QUEUE_URL_VENDOR_A``), one plain variable each so a
shell script or curl reads them without parsing JSON. Lane names are lower-case letters, digits
and ``-`` only, so the mapping is one to one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sluice import aws
from sluice.settings import PROJECT_ROOT, Lane

LOCAL_DIR = PROJECT_ROOT / ".sluice"
LOCAL_ENV = LOCAL_DIR / "local.env"

# The keys of local.env that boto3 reads from the environment: exported, they point every
# client of a process at the local servers.
ENDPOINT_ENV_KEYS: tuple[str, ...] = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_LAMBDA",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)

# Every key the stack writes, in the order it writes them.
LOCAL_ENV_KEYS: tuple[str, ...] = (
    *ENDPOINT_ENV_KEYS,
    "SLUICE_API_URL",
    # The stand-in vendor API: its shared port (every vendor, and /_admin) and the secret holding
    # its token; each vendor's own port follows as SLUICE_VENDOR_URL_<NAME>.
    "SLUICE_VENDOR_URL",
    "SLUICE_VENDOR_SECRET_ID",
    "DATABASE_URL",
    # The mysql/mariadb client reads these (DATABASE_URL is for code); with them,
    # `mysql -u <user> <database>` reaches the stack's database.
    "MYSQL_HOST",
    "MYSQL_TCP_PORT",
    "MYSQL_PWD",
    "SLUICE_QUEUE_URL",
    "SLUICE_DLQ_URL",
    "SLUICE_LAMBDA_STATS_URL",
    "SLUICE_STAGE",
    "SLUICE_STACK_PID",
)

# The local servers accept any credentials; these say so to whoever reads the file.
DUMMY_ACCESS_KEY_ID = "local"
DUMMY_SECRET_ACCESS_KEY = "local"

# Every variable use_local_stack may set or remove: what a caller saves to put the process back.
EXPORTED_ENV_KEYS: tuple[str, ...] = (*ENDPOINT_ENV_KEYS, "AWS_SESSION_TOKEN")


class LocalStackNotRunningError(RuntimeError):
    """No `.sluice/local.env`: the local stack was never started (or was stopped)."""


def write_local_env(values: Mapping[str, str], path: Path = LOCAL_ENV) -> Path:
    """Write ``values`` as ``KEY=value`` lines (known keys first, in order); atomic replace."""
    for key, value in values.items():
        if "\n" in str(value) or "=" in key:
            raise ValueError(f"local.env entry {key!r} cannot hold a newline or '=' in its name")
    extra = sorted(k for k in values if k not in LOCAL_ENV_KEYS)
    ordered = [k for k in LOCAL_ENV_KEYS if k in values] + extra
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# written by `sluice local up`; removed by `sluice local down`\n"
    text += "".join(f"{k}={values[k]}\n" for k in ordered)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    # Readers poll for this file to decide the stack is up: it must never be seen half-written.
    os.replace(tmp, path)
    return path


def read_local_env(path: Path = LOCAL_ENV) -> dict[str, str]:
    """The stack's endpoints; raises LocalStackNotRunningError naming `sluice local up` when absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LocalStackNotRunningError(
            f"the local stack is not running ({path.name} not found under {path.parent.name}/): "
            "start it with `sluice local up` (or `sluice local up --detach`)"
        ) from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def lane_queue_keys(lane: str) -> tuple[str, str]:
    """local.env's keys of one named lane's queue URL and DLQ URL."""
    suffix = lane.upper().replace("-", "_")
    return f"SLUICE_QUEUE_URL_{suffix}", f"SLUICE_DLQ_URL_{suffix}"


def queue_env_keys(lane: Lane) -> tuple[str, str]:
    """local.env's keys of ``lane``'s queue URL and DLQ URL: today's plain keys for the one lane
    of a config without lanes, the lane's own otherwise."""
    return ("SLUICE_QUEUE_URL", "SLUICE_DLQ_URL") if lane.implicit else lane_queue_keys(lane.name)


def remove_local_env(path: Path = LOCAL_ENV) -> None:
    path.unlink(missing_ok=True)


def use_local_stack(env: Mapping[str, str], *, default_region: str = "") -> dict[str, str | None]:
    """Point this process's AWS clients at the local stack that ``env`` (its local.env) describes.

    boto3 reads the endpoints from the environment only when a client is made, so every endpoint
    ``env`` names (the general one, SQS, Lambda, Secrets Manager) is exported, one it does not name
    is removed (that service then falls back to AWS_ENDPOINT_URL, never to another stack's port),
    and sluice.aws's cached clients are dropped. Credentials are the stack's (the local servers
    accept any; dummy ones when ``env`` has none), without a session token, so real credentials
    never reach a local server. The region is ``env``'s, else ``default_region`` when the process
    has none. Returns what it replaced (None: was unset), for restore_environment.
    """
    previous = {key: os.environ.get(key) for key in EXPORTED_ENV_KEYS}
    exported = {key: env[key] for key in ENDPOINT_ENV_KEYS if env.get(key)}
    exported.setdefault("AWS_ACCESS_KEY_ID", DUMMY_ACCESS_KEY_ID)
    exported.setdefault("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_ACCESS_KEY)
    if default_region and not os.environ.get("AWS_DEFAULT_REGION"):
        exported.setdefault("AWS_DEFAULT_REGION", default_region)
    for key in EXPORTED_ENV_KEYS:
        if key in exported:
            os.environ[key] = exported[key]
        elif key.startswith("AWS_ENDPOINT_URL") or key == "AWS_SESSION_TOKEN":
            os.environ.pop(key, None)
    aws.reset_clients()
    return previous


def restore_environment(previous: Mapping[str, str | None]) -> None:
    """Put back what use_local_stack replaced, and drop the clients made against the stack."""
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    aws.reset_clients()
