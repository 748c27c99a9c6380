"""Pure parts of rack-power: the driver registry, retry with backoff, the idempotency cache, error
classification and the rule that a password never shows in a repr or an error message."""

import pytest
from pyghmi.exceptions import IpmiException

from metalbus.contracts.errors import BadRequest, Forbidden, Unavailable
from metalbus.contracts.machines import PowerType
from metalbus.contracts.power import PowerAction, PowerCommand, PowerState, PowerTargetSpec
from metalbus_rack_power.drivers import Bmc, DriverRegistry
from metalbus_rack_power.idempotency import OutcomeCache
from metalbus_rack_power.ipmi import IpmiTarget, classify
from metalbus_rack_power.manual import ManualDriver
from metalbus_rack_power.redfish import RedfishTarget
from metalbus_rack_power.retry import RetryPolicy, with_retries

SECRET = "Hunter2-secret-Pa55"


def test_registry_answers_the_driver_of_each_power_type_and_refuses_others() -> None:
    manual = ManualDriver()
    registry = DriverRegistry({PowerType.MANUAL: manual})
    assert registry.driver(PowerType.MANUAL) is manual
    assert registry.power_types == frozenset({PowerType.MANUAL})
    with pytest.raises(BadRequest, match="no driver for power type ipmi"):
        registry.driver(PowerType.IPMI)


async def test_manual_driver_answers_unknown_and_refuses_to_act() -> None:
    bmc = Bmc(PowerType.MANUAL, {})
    assert await ManualDriver().query(bmc) is PowerState.UNKNOWN
    for act in (ManualDriver().on, ManualDriver().off, ManualDriver().cycle, ManualDriver().set_boot_pxe):
        with pytest.raises(BadRequest, match="manual"):
            await act(bmc)


def test_backoff_doubles_and_is_capped() -> None:
    assert RetryPolicy(retries=4, backoff_s=0.5, max_backoff_s=1.5).delays() == [0.5, 1.0, 1.5, 1.5]
    assert RetryPolicy(retries=0).delays() == []


async def test_unavailable_is_retried_after_the_backoff_then_succeeds() -> None:
    slept: list[float] = []
    calls: list[int] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Unavailable("BMC did not answer")
        return "done"

    assert await with_retries(flaky, RetryPolicy(retries=3, backoff_s=0.1), sleep=sleep) == "done"
    assert len(calls) == 3 and slept == [0.1, 0.2]


async def test_retries_give_up_with_the_last_error_and_never_retry_refusals() -> None:
    calls: list[str] = []

    async def sleep(_: float) -> None:
        return None

    async def dead() -> None:
        calls.append("dead")
        raise Unavailable("BMC did not answer")

    async def refused() -> None:
        calls.append("refused")
        raise Forbidden("BMC 10.0.0.1 refused the credentials")

    with pytest.raises(Unavailable):
        await with_retries(dead, RetryPolicy(retries=2), sleep=sleep)
    with pytest.raises(Forbidden):
        await with_retries(refused, RetryPolicy(retries=2), sleep=sleep)
    assert calls == ["dead"] * 3 + ["refused"]


def test_idempotency_cache_expires_after_its_ttl_and_drops_the_least_recently_used() -> None:
    now = [0.0]
    cache = OutcomeCache(capacity=2, ttl_s=10, monotonic=lambda: now[0])
    cache.put("a", PowerState.ON)
    cache.put("b", PowerState.OFF)
    assert cache.get("a") is PowerState.ON  # "a" is now the most recently used
    cache.put("c", PowerState.ON)
    assert cache.get("b") is None and len(cache) == 2
    now[0] = 10.5
    assert cache.get("a") is None and cache.get("c") is None


def test_classify_maps_pyghmi_failures_to_typed_errors() -> None:
    target = IpmiTarget("10.0.0.21", 623, "admin", SECRET)
    assert isinstance(classify(IpmiException("Incorrect password provided"), target, "login"), Forbidden)
    assert isinstance(classify(IpmiException("Unauthorized name"), target, "login"), Forbidden)
    assert isinstance(classify(IpmiException(None), target, "login"), Unavailable)
    assert isinstance(classify(IpmiException("timeout"), target, "power on"), Unavailable)
    assert isinstance(classify(OSError("network unreachable"), target, "login"), Unavailable)
    unsupported = classify(IpmiException("Invalid data field in request"), target, "boot device pxe")
    assert isinstance(unsupported, BadRequest) and "boot device pxe" in unsupported.message
    assert classify(IpmiException("Incorrect password provided"), target, "x").message == (
        "BMC 10.0.0.21 refused the credentials"
    )


def test_parameters_are_checked_with_clear_messages() -> None:
    with pytest.raises(BadRequest, match="need an 'address'"):
        IpmiTarget.of(Bmc(PowerType.IPMI, {}))
    with pytest.raises(BadRequest, match="'port' must be a whole number"):
        IpmiTarget.of(Bmc(PowerType.IPMI, {"address": "10.0.0.1", "port": "x"}))
    with pytest.raises(BadRequest, match="'auth' must be basic or session"):
        RedfishTarget.of(Bmc(PowerType.REDFISH, {"address": "10.0.0.1", "auth": "digest"}))
    redfish = RedfishTarget.of(Bmc(PowerType.REDFISH, {"address": "10.0.0.1", "verify_tls": False}))
    assert redfish.base_url == "https://10.0.0.1:443" and not redfish.verify_tls and redfish.auth == "basic"


def test_no_repr_holds_the_password() -> None:
    secrets = {"password": SECRET}
    parameters = {"address": "10.0.0.21", "username": "admin"}
    things = [
        Bmc(PowerType.IPMI, parameters, secrets),
        IpmiTarget.of(Bmc(PowerType.IPMI, parameters, secrets)),
        RedfishTarget.of(Bmc(PowerType.REDFISH, parameters, secrets)),
        PowerCommand(system_id="x7kq2m", action=PowerAction.ON, power_type=PowerType.IPMI, secrets=secrets),
        PowerTargetSpec(system_id="x7kq2m", power_type=PowerType.IPMI, parameters=parameters, secrets=secrets),
    ]
    for thing in things:
        assert SECRET not in repr(thing) and SECRET not in str(thing), type(thing).__name__
