"""The region's lease decisions without a database: subnet sanity, which addresses to offer, what a commit does."""

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metalbus.contracts.errors import Conflict
from metalbus.contracts.leases import Lease, LeaseState, Subnet, SubnetCreate
from metalbus_region.leases import (
    CommitAction,
    commit_action,
    host_addresses,
    is_active,
    offer_candidates,
    preferred_addresses,
    subnet_create_problem,
)

NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
SUBNET = Subnet(
    subnet_id=1,
    cidr=IPv4Network("10.20.0.0/24"),
    gateway=IPv4Address("10.20.0.1"),
    dns_servers=[IPv4Address("10.20.0.2")],
    dynamic_start=IPv4Address("10.20.0.1"),
    dynamic_end=IPv4Address("10.20.0.99"),
    managed=True,
    lease_time_s=600,
    domain="maas.internal",
)
MAC, OTHER_MAC = "52:54:00:12:34:56", "52:54:00:65:43:21"


def ip(last_octet: int) -> IPv4Address:
    return IPv4Address(f"10.20.0.{last_octet}")


def lease(mac: str, state: LeaseState, expires_at: datetime = NOW + timedelta(minutes=1)) -> Lease:
    return Lease(ip=ip(50), mac=mac, subnet_id=1, rack_id="rack-1", state=state, expires_at=expires_at)


@pytest.mark.parametrize(
    ("cidr", "first", "last"),
    [
        ("10.20.0.0/24", "10.20.0.1", "10.20.0.254"),
        ("10.20.0.8/30", "10.20.0.9", "10.20.0.10"),
        ("10.20.0.8/31", "10.20.0.8", "10.20.0.9"),
        ("10.20.0.8/32", "10.20.0.8", "10.20.0.8"),
    ],
)
def test_hosts_never_use_the_network_or_broadcast_address_except_on_point_to_point_links(
    cidr: str, first: str, last: str
) -> None:
    assert host_addresses(IPv4Network(cidr)) == (IPv4Address(first), IPv4Address(last))


def test_every_documented_subnet_example_makes_sense() -> None:
    examples = SubnetCreate.model_json_schema()["examples"]
    assert examples
    for example in examples:
        assert subnet_create_problem(SubnetCreate.model_validate(example)) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"dynamic_start": "10.20.0.100"}, "give both or neither"),
        ({"dynamic_start": "10.20.0.9", "dynamic_end": "10.20.0.8"}, "starts at 10.20.0.9, after its end 10.20.0.8"),
        ({"dynamic_start": "10.20.0.0", "dynamic_end": "10.20.0.8"}, "outside the host addresses of 10.20.0.0/24"),
        ({"dynamic_start": "10.20.0.200", "dynamic_end": "10.20.0.255"}, "outside the host addresses"),
        ({"dynamic_start": "10.20.1.1", "dynamic_end": "10.20.1.9"}, "10.20.1.1-10.20.1.9 lies outside"),
        ({"gateway": "10.20.0.255"}, "gateway 10.20.0.255 is not a host address"),
        ({"reserved": ["10.20.0.7", "10.30.0.7"]}, "reserved addresses 10.30.0.7 lie outside"),
    ],
)
def test_a_subnet_that_makes_no_sense_is_named_with_its_reason(fields: dict[str, object], reason: str) -> None:
    problem = subnet_create_problem(SubnetCreate.model_validate({"cidr": "10.20.0.0/24", **fields}))
    assert problem is not None and reason in problem


def test_previous_address_comes_before_the_requested_one() -> None:
    assert preferred_addresses(SUBNET, ip(40), ip(30)) == [ip(40), ip(30)]
    assert preferred_addresses(SUBNET, ip(40), ip(40)) == [ip(40)]
    assert preferred_addresses(SUBNET, None, ip(30)) == [ip(30)]


def test_only_dynamic_addresses_that_are_not_infrastructure_are_preferred() -> None:
    assert preferred_addresses(SUBNET, ip(1), ip(2)) == [], "the gateway and the DNS server"
    assert preferred_addresses(SUBNET, ip(150), IPv4Address("10.30.0.5")) == [], "outside the dynamic range"
    no_range = SUBNET.model_copy(update={"dynamic_start": None, "dynamic_end": None})
    assert preferred_addresses(no_range, ip(40), ip(30)) == []


def test_free_preferred_addresses_go_first_then_the_lowest_free_ones_each_once() -> None:
    assert offer_candidates([ip(40), ip(30)], {ip(40)}, [ip(3), ip(30), ip(4)]) == [ip(30), ip(3), ip(4)]
    assert offer_candidates([], set(), []) == []


addresses = st.lists(st.integers(min_value=1, max_value=99).map(ip), max_size=12)


@given(preferred=addresses, taken=addresses, lowest=addresses)
def test_candidates_never_repeat_and_never_include_a_taken_preferred_address(
    preferred: list[IPv4Address], taken: list[IPv4Address], lowest: list[IPv4Address]
) -> None:
    candidates = offer_candidates(preferred, set(taken), lowest)
    assert len(candidates) == len(set(candidates))
    assert set(candidates) == {a for a in preferred if a not in taken} | set(lowest)
    assert all(a not in taken for a in candidates if a not in lowest)


def test_a_lease_is_active_while_offered_or_bound_and_unexpired() -> None:
    assert is_active(lease(MAC, LeaseState.OFFERED), NOW)
    assert is_active(lease(MAC, LeaseState.BOUND), NOW)
    assert not is_active(lease(MAC, LeaseState.BOUND, expires_at=NOW), NOW)
    for ended in (LeaseState.RELEASED, LeaseState.DECLINED, LeaseState.EXPIRED):
        assert not is_active(lease(MAC, ended), NOW)


def test_a_mac_commits_its_own_offer_or_binding() -> None:
    assert commit_action(SUBNET, lease(MAC, LeaseState.OFFERED), MAC, ip(50), False) is CommitAction.BIND_HELD
    assert commit_action(SUBNET, lease(MAC, LeaseState.BOUND), MAC, ip(50), False) is CommitAction.BIND_HELD


def test_a_free_dynamic_address_is_bound_on_init_reboot() -> None:
    assert commit_action(SUBNET, None, MAC, ip(50), False) is CommitAction.BIND_FREE


@pytest.mark.parametrize(
    ("holder", "address", "reserved", "reason"),
    [
        (lease(OTHER_MAC, LeaseState.OFFERED), ip(50), False, "held by another client"),
        (lease(OTHER_MAC, LeaseState.BOUND), ip(50), False, "held by another client"),
        (lease(MAC, LeaseState.DECLINED), ip(50), False, "quarantined"),
        (None, ip(50), True, "not a dynamic address"),
        (None, ip(1), False, "not a dynamic address"),
        (None, ip(2), False, "not a dynamic address"),
        (None, ip(150), False, "not a dynamic address"),
    ],
)
def test_a_commit_the_mac_may_not_make_is_a_conflict(
    holder: Lease | None, address: IPv4Address, reserved: bool, reason: str
) -> None:
    with pytest.raises(Conflict, match=reason):
        commit_action(SUBNET, holder, MAC, address, reserved)
