"""What rack-proxy's DNS answers (pure: a query and the zone in, an answer or "forward it" out; no I/O).

Inside the internal domain: one name per managed subnet resolving to every healthy rack on it (rotated round-robin
from one query to the next), machine hostnames to their lease addresses, SOA and NS at the apex, NXDOMAIN for other
names. PTR for the machines' lease addresses. Everything else is forwarded to the upstream resolvers.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from metalbus.contracts.dns import DnsZone
from metalbus_rack_proxy.dns_codec import (
    CLASS_IN,
    Query,
    Rcode,
    Record,
    RecordType,
    a_rdata,
    name_rdata,
    soa_rdata,
)

CLASS_ANY = 255
SUBNET_NAME_TTL_S = 5  # short: a rack that goes down must leave caches quickly
HOST_TTL_S = 30
SOA_REFRESH_S = 60
SOA_RETRY_S = 30
SOA_EXPIRE_S = 3600
NEGATIVE_TTL_S = 5
NAMESERVER_LABEL = "ns"
MAILBOX_LABEL = "hostmaster"


def reverse_name(address: IPv4Address) -> str:
    """``10.20.0.57`` → ``57.0.20.10.in-addr.arpa``."""
    return address.reverse_pointer


@dataclass(frozen=True)
class ZoneView:
    """The zone indexed for answering: absolute lower-case names without the final dot."""

    domain: str
    serial: int
    subnet_racks: dict[str, tuple[IPv4Address, ...]] = field(default_factory=dict)
    hosts: dict[str, IPv4Address] = field(default_factory=dict)
    pointers: dict[str, str] = field(default_factory=dict)

    @property
    def nameserver(self) -> str:
        return f"{NAMESERVER_LABEL}.{self.domain}"

    def all_racks(self) -> tuple[IPv4Address, ...]:
        return tuple(sorted({address for racks in self.subnet_racks.values() for address in racks}))


def zone_view(zone: DnsZone) -> ZoneView:
    domain = zone.domain.lower().strip(".")
    subnet_racks = {subnet.name.lower(): tuple(subnet.rack_addresses) for subnet in zone.subnets}
    hosts = {f"{host.hostname.lower()}.{domain}": host.address for host in zone.hosts}
    pointers = {reverse_name(address): name for name, address in hosts.items()}
    return ZoneView(domain=domain, serial=zone.serial, subnet_racks=subnet_racks, hosts=hosts, pointers=pointers)


@dataclass(frozen=True)
class LocalAnswer:
    rcode: Rcode
    answers: Sequence[Record] = ()
    authority: Sequence[Record] = ()


@dataclass(frozen=True)
class Forward:
    """Not ours: ask the upstream resolvers."""


FORWARD = Forward()


def rotated(addresses: Sequence[IPv4Address], turn: int) -> list[IPv4Address]:
    """The addresses starting at position ``turn`` (mod their count), wrapping around."""
    if not addresses:
        return []
    start = turn % len(addresses)
    return [*addresses[start:], *addresses[:start]]


class Answerer:
    """Answers from the current zone; keeps one round-robin turn per subnet name across zone refreshes."""

    def __init__(self, domain: str) -> None:
        self.domain = domain.lower().strip(".")
        self.zone: ZoneView | None = None
        self._turns: dict[str, int] = {}
        self.generation = 0  # grows with every zone: replies remembered for an older one are stale

    def use_zone(self, zone: ZoneView) -> None:
        self.zone = zone
        self.domain = zone.domain
        self._turns = {name: turn for name, turn in self._turns.items() if name in zone.subnet_racks}
        self.generation += 1

    def rotation_size(self, query: Query) -> int:
        """How many different orders the answer to ``query`` cycles through (1: it does not rotate)."""
        racks = self.zone.subnet_racks.get(query.name, ()) if self.zone is not None else ()
        return len(racks) if _asks_a(query.qtype) and len(racks) > 1 else 1

    def turn_of(self, name: str) -> int:
        return self._turns.get(name, 0)

    def take_turn(self, name: str) -> int:
        """The turn the next answer for ``name`` uses; the one after starts one further."""
        turn = self._turns.get(name, 0)
        self._turns[name] = turn + 1
        return turn

    def answer(self, query: Query) -> LocalAnswer | Forward:
        name = query.name
        in_domain = name == self.domain or name.endswith("." + self.domain)
        zone = self.zone
        if zone is not None and name in zone.pointers:
            return self._pointer(zone, query)
        if not in_domain:
            return FORWARD
        if query.qclass not in (CLASS_IN, CLASS_ANY):
            return LocalAnswer(Rcode.REFUSED)
        if zone is None:
            return LocalAnswer(Rcode.SERVFAIL)  # not loaded yet: a resolver will retry elsewhere
        return self._in_domain(zone, query)

    def _in_domain(self, zone: ZoneView, query: Query) -> LocalAnswer:
        name, qtype = query.name, query.qtype
        if name == zone.domain:
            return self._apex(zone, qtype)
        if name in zone.subnet_racks:
            racks = zone.subnet_racks[name]
            return self._addresses(zone, name, qtype, self._next_turn(name, racks) if _asks_a(qtype) else racks)
        if name in zone.hosts:
            return self._addresses(zone, name, qtype, [zone.hosts[name]], ttl=HOST_TTL_S)
        if name == zone.nameserver:
            return self._addresses(zone, name, qtype, list(zone.all_racks()))
        return LocalAnswer(Rcode.NXDOMAIN, authority=[soa_record(zone)])

    def untake_turn(self, name: str) -> None:
        """Give back a turn taken for an answer that is then built afresh (which takes it again)."""
        self._turns[name] = self._turns.get(name, 1) - 1

    def _next_turn(self, name: str, addresses: Sequence[IPv4Address]) -> list[IPv4Address]:
        return rotated(addresses, self.take_turn(name))

    def _addresses(
        self,
        zone: ZoneView,
        name: str,
        qtype: int,
        addresses: Sequence[IPv4Address],
        *,
        ttl: int = SUBNET_NAME_TTL_S,
    ) -> LocalAnswer:
        if not _asks_a(qtype) or not addresses:
            return LocalAnswer(Rcode.NOERROR, authority=[soa_record(zone)])
        return LocalAnswer(Rcode.NOERROR, [Record(name, RecordType.A, ttl, a_rdata(a)) for a in addresses])

    def _apex(self, zone: ZoneView, qtype: int) -> LocalAnswer:
        records: list[Record] = []
        if qtype in (RecordType.SOA, RecordType.ANY):
            records.append(soa_record(zone))
        if qtype in (RecordType.NS, RecordType.ANY):
            records.append(Record(zone.domain, RecordType.NS, HOST_TTL_S, name_rdata(zone.nameserver)))
        if records:
            return LocalAnswer(Rcode.NOERROR, records)
        return LocalAnswer(Rcode.NOERROR, authority=[soa_record(zone)])

    def _pointer(self, zone: ZoneView, query: Query) -> LocalAnswer:
        if query.qtype not in (RecordType.PTR, RecordType.ANY):
            return LocalAnswer(Rcode.NOERROR)
        target = zone.pointers[query.name]
        return LocalAnswer(Rcode.NOERROR, [Record(query.name, RecordType.PTR, HOST_TTL_S, name_rdata(target))])


def _asks_a(qtype: int) -> bool:
    return qtype in (RecordType.A, RecordType.ANY)


def soa_record(zone: ZoneView) -> Record:
    rdata = soa_rdata(
        zone.nameserver,
        f"{MAILBOX_LABEL}.{zone.domain}",
        zone.serial,
        refresh=SOA_REFRESH_S,
        retry=SOA_RETRY_S,
        expire=SOA_EXPIRE_S,
        minimum=NEGATIVE_TTL_S,
    )
    return Record(zone.domain, RecordType.SOA, NEGATIVE_TTL_S, rdata)
