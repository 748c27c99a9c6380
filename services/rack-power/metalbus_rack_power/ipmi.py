"""The IPMI power driver: IPMI 2.0 over LAN (lanplus) with pyghmi, off the event loop.

pyghmi blocks, so every BMC call runs in a bounded thread pool (``max_workers``) and holds a per-BMC lock: one
session per BMC at a time (BMCs hate concurrent sessions). A call (login, operations, logout) has a deadline;
past it the caller gets Unavailable at once while the thread finishes on its own and only then frees the BMC's
lock, so a dead BMC holds one worker and never the event loop nor other BMCs. Transient failures are retried with
backoff (see ``retry``).

Cipher suites: pyghmi proposes cipher suite 17 (HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128) first and, when the
BMC refuses it, proposes 3 (HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) in the same login; it offers no way to start
at 3. So ``cipher_suite`` 17 (the default) means "17, falling back to 3", and 3 is accepted and means the same
(a BMC that knows 17 is not refused the stronger suite). The suite actually negotiated is logged per BMC and kept
in :attr:`IpmiDriver.negotiated`. Other suites are refused as BadRequest.

Known pyghmi behaviour (seen against ipmi_sim): with many threads, a call now and then waits for pyghmi's
retransmission timer (0.5-1 s) before its reply is noticed; it completes, only later (bench/power.py shows it).
"""

import asyncio
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from pyghmi.exceptions import IpmiException  # type: ignore[import-untyped]
from pyghmi.ipmi.command import Command  # type: ignore[import-untyped]

from metalbus.contracts.errors import BadRequest, Forbidden, MetalbusError, Unavailable
from metalbus.contracts.power import PowerState
from metalbus_rack_power.drivers import Bmc
from metalbus_rack_power.retry import RetryPolicy, with_retries

log = structlog.get_logger("metalbus.rack.power.ipmi")

T = TypeVar("T")
SUPPORTED_CIPHER_SUITES = (17, 3)
DEFAULT_CIPHER_SUITE = 17
DEFAULT_PORT = 623
LOGOUT_SETTLE_S = 0.05  # see _release_later
_CREDENTIAL_REFUSALS = ("password", "unauthorized", "invalid user", "privilege", "username")
_SILENCE = ("timeout", "session no longer connected", "timed out")


@dataclass(frozen=True)
class IpmiTarget:
    """What one session needs; the password stays out of repr."""

    address: str
    port: int
    username: str
    password: str = field(repr=False)

    @classmethod
    def of(cls, bmc: Bmc) -> "IpmiTarget":
        suite = bmc.integer("cipher_suite", DEFAULT_CIPHER_SUITE)
        if suite not in SUPPORTED_CIPHER_SUITES:
            raise BadRequest(f"IPMI cipher suite {suite} is not supported (use 17 or 3)")
        return cls(bmc.address, bmc.integer("port", DEFAULT_PORT), bmc.text("username", ""), bmc.password)

    @property
    def name(self) -> str:
        return f"{self.address}:{self.port}"


def classify(error: BaseException, target: IpmiTarget, operation: str) -> MetalbusError:
    """The typed error for a pyghmi failure; never carries the password (pyghmi's messages do not hold it)."""
    text = str(error.args[0]) if isinstance(error, IpmiException) and error.args and error.args[0] else ""
    lowered = text.lower()
    if isinstance(error, OSError) or not text or any(word in lowered for word in _SILENCE):
        return Unavailable(f"BMC {target.name} did not answer ({operation})")
    if any(word in lowered for word in _CREDENTIAL_REFUSALS):
        return Forbidden(f"BMC {target.address} refused the credentials")
    return BadRequest(f"BMC {target.name} refused {operation}: {text}")


def negotiated_cipher_suite(command: Any) -> int:
    """17 when the session hashes with SHA-256 (16-byte integrity codes), else 3."""
    return 17 if getattr(command.ipmi_session, "currhashlen", 0) == 16 else 3


class IpmiDriver:
    """Power BMCs over IPMI; one instance per rack-power process (it owns the thread pool)."""

    def __init__(self, *, max_workers: int, timeout_s: float, retry: RetryPolicy) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ipmi")
        self._timeout_s = timeout_s
        self._retry = retry
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.negotiated: dict[str, int] = {}

    async def on(self, bmc: Bmc) -> None:
        await self._call(bmc, "power on", lambda command: command.set_power("on", wait=False))

    async def off(self, bmc: Bmc) -> None:
        await self._call(bmc, "power off", lambda command: command.set_power("off", wait=False))

    async def cycle(self, bmc: Bmc) -> None:
        # pyghmi's "boot": power on when off, hard reset when on.
        await self._call(bmc, "power cycle", lambda command: command.set_power("boot", wait=False))

    async def query(self, bmc: Bmc) -> PowerState:
        answer = await self._call(bmc, "power status", lambda command: command.get_power())
        return {"on": PowerState.ON, "off": PowerState.OFF}.get(str(answer.get("powerstate")), PowerState.UNKNOWN)

    async def set_boot_pxe(self, bmc: Bmc) -> None:
        await self._call(bmc, "boot device pxe", lambda command: command.set_bootdev("network", persist=False))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _call(self, bmc: Bmc, operation: str, work: Callable[[Any], T]) -> T:
        target = IpmiTarget.of(bmc)
        return await with_retries(lambda: self._attempt(target, operation, work), self._retry)

    async def _attempt(self, target: IpmiTarget, operation: str, work: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        lock = self._locks.setdefault(target.name, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), self._timeout_s)
        except TimeoutError:
            raise Unavailable(f"BMC {target.name} is still busy with an earlier call ({operation})") from None
        future = loop.run_in_executor(self._executor, self._session, target, operation, work)
        future.add_done_callback(lambda done: _release_later(loop, lock, done))
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(deadline - loop.time(), 0.001))
        except TimeoutError:
            log.warning("ipmi.timeout", bmc=target.name, operation=operation, timeout_s=self._timeout_s)
            raise Unavailable(f"BMC {target.name} did not answer within {self._timeout_s:g}s ({operation})") from None

    def _session(self, target: IpmiTarget, operation: str, work: Callable[[Any], T]) -> T:
        """In a worker thread: log in, do ``work``, log out; pyghmi failures become typed errors."""
        try:
            # Bytes, not str: pyghmi keys its half-open sessions by the values given but deletes the key with the
            # encoded ones, so with str a stale, logged-out session would be handed to the next call.
            command = Command(
                bmc=target.address,
                userid=target.username.encode(),
                password=target.password.encode(),
                port=target.port,
                keepalive=False,
            )
        except (IpmiException, OSError) as error:
            raise classify(error, target, "login") from None
        self.negotiated[target.name] = negotiated_cipher_suite(command)
        try:
            return work(command)
        except (IpmiException, OSError) as error:
            raise classify(error, target, operation) from None
        finally:
            with suppress(Exception):
                command.ipmi_session.logout()


def _release_later(loop: asyncio.AbstractEventLoop, lock: asyncio.Lock, done: "asyncio.Future[Any]") -> None:
    """Free the BMC shortly after its thread finished. pyghmi sends the close-session request without waiting
    for the reply; a new login to the same BMC right away often loses its first answer to that late reply and
    waits for a retransmission (0.5-1 s). The pause costs no thread. The call's outcome was read by the caller
    (or abandoned after a timeout: marked retrieved here, so its traceback is not logged)."""
    if not done.cancelled():
        done.exception()
    loop.call_later(LOGOUT_SETTLE_S, lock.release)
