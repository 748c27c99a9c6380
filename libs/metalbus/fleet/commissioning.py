"""What the commissioning environment does over HTTP, built from the machine's profile instead of /proc and /sys.

The same requests as the ephemeral /init and the region's ``commissioning_script.sh``: GET
``<metadata_url>latest/user-data`` (the runner), then POST ``<metadata_url>2012-03-01/`` a multipart signal
``op=signal, status=WORKING, name=metalbus-inventory, exit_status=0, runtime`` with the files
``metalbus-inventory.out`` (the inventory as JSON) and ``.err`` (empty), then a final ``op=signal, status=OK``.
Every request carries an OAuth 1.0a PLAINTEXT header with a fresh nonce. As the runner does, a refusal (4xx) is
final (``MetadataRefused``), anything else (5xx, no connection) is tried again after 1 s, 2 s, … (times
``retry_scale``), 5 tries in all, then ``CommissioningError``: the service never answered, and the environment
boots again (the runner's exit status 75).
"""

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

from metalbus.contracts.metadata import INVENTORY_RESULT_NAME, HardwareInventory
from metalbus.fleet.boot_config import MetadataAccess
from metalbus.fleet.http_fetch import HttpError, HttpResponse, http_request
from metalbus.netns import NetworkNamespace

SIGNAL_VERSION = "2012-03-01"
ATTEMPTS = 5
_nonces = itertools.count()


class CommissioningError(Exception):
    """The metadata service refused a request, or never answered."""


class MetadataRefused(CommissioningError):
    """The metadata service answered 4xx: final, the environment powers off."""


def authorization(access: MetadataAccess, now: float | None = None) -> str:
    timestamp = int(time.time() if now is None else now)
    return (
        f'OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="{access.consumer_key}", '
        f'oauth_token="{access.token_key}", oauth_signature="%26{access.token_secret}", '
        f'oauth_nonce="{next(_nonces)}-{secrets.token_hex(4)}", oauth_timestamp="{timestamp}"'
    )


def signal_body(boundary: str, status: str, result: tuple[str, int, float, str, str] | None = None) -> bytes:
    """The runner's multipart body: op, status, and for a script name, exit_status, runtime, <name>.out/.err."""
    parts = [_field(boundary, "op", "signal"), _field(boundary, "status", status)]
    if result is not None:
        name, exit_status, runtime, stdout, stderr = result
        parts += [_field(boundary, "name", name), _field(boundary, "exit_status", str(exit_status))]
        parts += [_field(boundary, "runtime", str(int(runtime)))]
        parts += [_file(boundary, f"{name}.out", stdout), _file(boundary, f"{name}.err", stderr)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _field(boundary: str, name: str, value: str) -> bytes:
    return f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def _file(boundary: str, name: str, content: str) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + content.encode() + b"\r\n"


def inventory_output(inventory: HardwareInventory) -> str:
    """What ``commissioning_script.sh inventory`` prints for this hardware."""
    return inventory.model_dump_json() + "\n"


@dataclass
class MetadataClient:
    """The machine's conversation with the metadata service through the rack's proxy."""

    namespace: NetworkNamespace
    local_address: IPv4Address
    access: MetadataAccess
    retry_scale: float = 1.0
    timeout_s: float = 60.0

    async def read_user_data(self) -> bytes:
        url = f"{self.access.url.rstrip('/')}/latest/user-data"
        return (await self._with_retries("GET", url, {}, b"")).body

    async def post_inventory(self, inventory: HardwareInventory, runtime_s: float) -> None:
        result = (INVENTORY_RESULT_NAME, 0, runtime_s, inventory_output(inventory), "")
        await self._signal("WORKING", result)

    async def signal_ok(self) -> None:
        await self._signal("OK", None)

    async def _signal(self, status: str, result: tuple[str, int, float, str, str] | None) -> None:
        boundary = f"metalbus-{secrets.token_hex(6)}-boundary"
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        url = f"{self.access.url.rstrip('/')}/{SIGNAL_VERSION}/"
        await self._with_retries("POST", url, headers, signal_body(boundary, status, result))

    async def _with_retries(self, method: str, url: str, headers: dict[str, str], body: bytes) -> HttpResponse:
        problem = ""
        for attempt in range(1, ATTEMPTS + 1):
            sent = {**headers, "Authorization": authorization(self.access)}
            try:
                response = await http_request(
                    self.namespace, self.local_address, method, url, headers=sent, body=body, timeout_s=self.timeout_s
                )
            except (HttpError, OSError, TimeoutError) as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status < 300:
                    return response
                problem = f"HTTP {response.status}: {response.body[:200].decode(errors='replace')}"
                if 400 <= response.status < 500:
                    raise MetadataRefused(f"{method} {url} refused: {problem}")
            if attempt < ATTEMPTS:
                await asyncio.sleep(attempt * self.retry_scale)
        raise CommissioningError(f"{method} {url} failed {ATTEMPTS} times, last: {problem}")
