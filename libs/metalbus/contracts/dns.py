"""DNS zones: what a rack-proxy needs from the region to answer for the internal domain."""

from ipaddress import IPv4Address, IPv4Network

from pydantic import Field

from metalbus.contracts.base import Message, examples
from metalbus.contracts.racks import RACK_ID_PATTERN

# The internal domain when the region has no ``dns_internal_domain`` row in region_settings (a JSON string).
DEFAULT_INTERNAL_DOMAIN = "maas-internal"
DNS_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"


class DnsZoneQuery(Message):
    """A rack-proxy asks for the internal zone it serves."""

    model_config = examples({"schema_version": 1, "rack_id": "rack-1"})

    rack_id: str = Field(pattern=RACK_ID_PATTERN)


class SubnetName(Message):
    """One managed subnet's name and the addresses of every healthy rack-proxy with an address on it."""

    model_config = examples(
        {
            "schema_version": 1,
            "name": "10-20-0-0-24.maas-internal",
            "cidr": "10.20.0.0/24",
            "rack_addresses": ["10.20.0.2", "10.20.0.3"],
        }
    )

    name: str = Field(pattern=DNS_NAME_PATTERN, max_length=253)
    cidr: IPv4Network
    rack_addresses: list[IPv4Address] = Field(default_factory=list)


class HostRecord(Message):
    """A machine's hostname in the internal domain and the address of its bound lease."""

    model_config = examples({"schema_version": 1, "hostname": "node-7", "address": "10.20.0.57"})

    hostname: str = Field(pattern=DNS_NAME_PATTERN, max_length=253)
    address: IPv4Address


class DnsZone(Message):
    """The internal zone: subnet names, machine hostnames (relative to ``domain``) and a serial that only grows."""

    model_config = examples(
        {
            "schema_version": 1,
            "domain": "maas-internal",
            "subnets": [
                {"name": "10-20-0-0-24.maas-internal", "cidr": "10.20.0.0/24", "rack_addresses": ["10.20.0.2"]}
            ],
            "hosts": [{"hostname": "node-7", "address": "10.20.0.57"}],
            "serial": 1795600000,
        }
    )

    domain: str = Field(pattern=DNS_NAME_PATTERN, max_length=253)
    subnets: list[SubnetName] = Field(default_factory=list)
    hosts: list[HostRecord] = Field(default_factory=list)
    serial: int = Field(ge=0, lt=2**32, description="The database's clock in seconds when the zone was built.")
