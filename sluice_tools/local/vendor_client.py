"""The typed client of the stand-in vendor API's admin endpoints (sluice_tools/local/vendor_api.py).

Tests, the demo and the chaos suite configure vendors and read their counters with it::

    vendors = VendorClient(env["SLUICE_VENDOR_URL"])
    vendors.update("b", rate_per_s=2, failure_rate=0.1)
    vendors.outage("a", refuse_s=10, down_s=10)   # connection refused, then 503s, then healthy
    print(vendors.counters("b").peak_requests_per_s)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from sluice_tools.local.vendor_api import DeliveredMessage, VendorCounters, VendorSettings


class VendorAdminError(RuntimeError):
    """The vendor API refused an admin request or could not be reached; says which and why."""


@dataclass(frozen=True)
class VendorState:
    name: str
    url: str  # the vendor's own port: the one an outage closes
    listening: bool
    listen_error: str
    refuse_remaining_s: float
    down_remaining_s: float
    settings: VendorSettings
    counters: VendorCounters

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VendorState:
        return cls(name=data["name"], url=data["url"], listening=bool(data["listening"]),
                   listen_error=data.get("listen_error", ""),
                   refuse_remaining_s=float(data["outage"]["refuse_s"]),
                   down_remaining_s=float(data["outage"]["down_s"]),
                   settings=VendorSettings.model_validate(data["settings"]),
                   counters=VendorCounters.from_dict(data["counters"]))


class VendorClient:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            raise VendorAdminError(f"{method} {path}: {exc.code} {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise VendorAdminError(f"cannot reach the vendor API at {self.url}: {exc}") from None

    def vendors(self) -> dict[str, VendorState]:
        return {name: VendorState.from_dict(s) for name, s in self._call("GET", "/_admin/vendors")["vendors"].items()}

    def get(self, name: str) -> VendorState:
        return VendorState.from_dict(self._call("GET", f"/_admin/vendors/{name}"))

    def counters(self, name: str) -> VendorCounters:
        return self.get(name).counters

    def put(self, name: str, settings: VendorSettings) -> VendorState:
        """Create the vendor or replace all its settings (counters and stored keys stay)."""
        return VendorState.from_dict(self._call("PUT", f"/_admin/vendors/{name}", settings.model_dump()))

    def update(self, name: str, **changes: Any) -> VendorState:
        """Change some settings of an existing vendor, keeping the rest."""
        current = self.get(name).settings.model_dump()
        return self.put(name, VendorSettings.model_validate({**current, **changes}))

    def outage(self, name: str, refuse_s: float = 0, down_s: float = 0) -> VendorState:
        """Refuse connections for ``refuse_s``, then answer 503 for ``down_s``, then heal (0, 0: heal now)."""
        return VendorState.from_dict(self._call("POST", f"/_admin/vendors/{name}/outage",
                                                {"refuse_s": refuse_s, "down_s": down_s}))

    def messages(self, name: str) -> list[DeliveredMessage]:
        return [DeliveredMessage(**m) for m in self._call("GET", f"/_admin/vendors/{name}/messages")["messages"]]

    def reset(self) -> list[str]:
        """The server as it started: first vendors and settings, nothing counted; returns their names."""
        names: list[str] = self._call("POST", "/_admin/reset")["vendors"]
        return names
