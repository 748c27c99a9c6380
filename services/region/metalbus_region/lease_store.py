"""What the region keeps about DHCP leases in PostgreSQL: the queries, each taking a connection.

An address has at most one holder (a row in state offered, bound or declined): the partial unique index
``leases_one_holder_per_ip`` guarantees it whichever rack or replica asks, so the inserts here use
``ON CONFLICT DO NOTHING`` and report a lost race as "no row" for the caller to try the next address.
"""

from collections.abc import Iterable
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address

import asyncpg

from metalbus.contracts.leases import Lease, LeaseState
from metalbus.db.pool import DbConnection

LEASE_COLUMNS = "ip, mac, subnet_id, rack_id, state, expires_at, hostname"
LEASE_COLUMNS_OF_L = ", ".join(f"l.{column}" for column in LEASE_COLUMNS.split(", "))
"""The same columns qualified by the alias ``l`` (UPDATE … FROM statements, where names would be ambiguous)."""
HOLDING = "('offered', 'bound', 'declined')"
ACTIVE = "('offered', 'bound')"
# Two-key advisory locks (a key space apart from the single-key migration lock): class, then the address.
ADDRESS_LOCK_CLASS = 0x6C65_6173  # "leas"
POOL_LOCK_CLASS = 0x706F_6F6C  # "pool"
_ADDRESS_LOCK = "pg_try_advisory_xact_lock($9, (($2::inet - '0.0.0.0'::inet) - 2147483648)::integer)"


def lease_from_row(row: asyncpg.Record) -> Lease:
    # Validated, not model_construct: with typed values pydantic's validation (in Rust) is the faster of the two.
    return Lease(
        ip=row["ip"],
        mac=str(row["mac"]),
        subnet_id=row["subnet_id"],
        rack_id=row["rack_id"],
        state=LeaseState(row["state"]),
        expires_at=row["expires_at"],
        hostname=row["hostname"],
    )


async def expire_stale(conn: DbConnection, subnet_id: int, now: datetime) -> list[Lease]:
    """Move the subnet's holders whose time is up to 'expired' (rows another transaction is changing are
    left to it); returns the leases that expired."""
    rows = await conn.fetch(
        f"""
        UPDATE leases SET state = 'expired', updated_at = $2
         WHERE lease_id IN (SELECT lease_id FROM leases
                             WHERE subnet_id = $1 AND state IN {HOLDING} AND expires_at <= $2
                               FOR UPDATE SKIP LOCKED)
        RETURNING {LEASE_COLUMNS}
        """,
        subnet_id,
        now,
    )
    return [lease_from_row(row) for row in rows]


async def latest_of_mac(conn: DbConnection, subnet_id: int, mac: str) -> Lease | None:
    """The MAC's active (offered/bound) lease in the subnet if it has one, else its most recent lease."""
    row = await conn.fetchrow(
        f"""
        SELECT {LEASE_COLUMNS} FROM leases WHERE mac = $2::macaddr AND subnet_id = $1
         ORDER BY state IN {ACTIVE} DESC, updated_at DESC, lease_id DESC LIMIT 1
        """,
        subnet_id,
        mac,
    )
    return None if row is None else lease_from_row(row)


async def refresh_offer(conn: DbConnection, ip: IPv4Address, mac: str, expires_at: datetime, now: datetime) -> Lease:
    row = await conn.fetchrow(
        f"""
        UPDATE leases SET expires_at = $3, updated_at = $4
         WHERE ip = $1::inet AND mac = $2::macaddr AND state = 'offered'
        RETURNING {LEASE_COLUMNS}
        """,
        ip,
        mac,
        expires_at,
        now,
    )
    assert row is not None, "an offer found in this transaction is still there"
    return lease_from_row(row)


async def taken_among(conn: DbConnection, subnet_id: int, addresses: list[IPv4Address]) -> set[IPv4Address]:
    """Which of ``addresses`` have a holder now or are reserved in the subnet."""
    if not addresses:
        return set()
    rows = await conn.fetch(
        f"""
        SELECT ip FROM leases WHERE ip = ANY($2::inet[]) AND state IN {HOLDING}
        UNION SELECT ip FROM reserved_ips WHERE subnet_id = $1 AND ip = ANY($2::inet[])
        """,
        subnet_id,
        addresses,
    )
    return {row["ip"] for row in rows}


async def lowest_free(
    conn: DbConnection,
    subnet_id: int,
    first: IPv4Address,
    last: IPv4Address,
    excluded: list[IPv4Address],
    count: int,
) -> list[IPv4Address]:
    """Up to ``count`` lowest addresses of [first, last] that have no holder, are not reserved in the subnet
    and not in ``excluded``. Works on the gaps between taken addresses, so a big, busy range costs one pass
    over its holders, not one probe per address."""
    rows = await conn.fetch(
        f"""
        WITH taken AS (
            SELECT ip - '0.0.0.0'::inet AS n FROM leases WHERE state IN {HOLDING} AND ip BETWEEN $2 AND $3
            UNION SELECT ip - '0.0.0.0'::inet FROM reserved_ips WHERE subnet_id = $1 AND ip BETWEEN $2 AND $3
            UNION SELECT a - '0.0.0.0'::inet FROM unnest($4::inet[]) AS a WHERE a BETWEEN $2 AND $3
        ), bounds AS (
            SELECT n FROM taken
            UNION ALL SELECT ($2::inet - '0.0.0.0'::inet) - 1
            UNION ALL SELECT ($3::inet - '0.0.0.0'::inet) + 1
        ), gaps AS (
            SELECT n + 1 AS gap_first, lead(n) OVER (ORDER BY n) - 1 AS gap_last FROM bounds
        )
        SELECT '0.0.0.0'::inet + (gap_first + step) AS ip
          FROM gaps, generate_series(0, LEAST(gap_last - gap_first, $5 - 1)) AS step
         WHERE gap_first <= gap_last
         ORDER BY gap_first + step
         LIMIT $5
        """,
        subnet_id,
        first,
        last,
        excluded,
        count,
    )
    return [row["ip"] for row in rows]


async def insert_lease(
    conn: DbConnection,
    lease: Lease,
    now: datetime,
    *,
    skip_if_contended: bool,
) -> Lease | None:
    """Insert ``lease`` unless its address or the MAC's active slot in the subnet is taken: then None.

    ``skip_if_contended`` also gives up (None) at once when another transaction is trying the same address,
    instead of waiting for it to finish: concurrent offers spread over the free addresses instead of queueing
    behind the lowest one.
    """
    values = (lease.subnet_id, lease.ip, lease.mac, lease.rack_id, lease.state.value, lease.hostname)
    guard, extra = (f"WHERE {_ADDRESS_LOCK}", (ADDRESS_LOCK_CLASS,)) if skip_if_contended else ("", ())
    row = await conn.fetchrow(
        f"""
        INSERT INTO leases (subnet_id, ip, mac, rack_id, state, hostname, expires_at, created_at, updated_at)
        SELECT $1, $2::inet, $3::macaddr, $4, $5, $6, $7, $8, $8 {guard}
        ON CONFLICT DO NOTHING
        RETURNING {LEASE_COLUMNS}
        """,
        *values,
        lease.expires_at,
        now,
        *extra,
    )
    return None if row is None else lease_from_row(row)


async def holder_for_update(conn: DbConnection, ip: IPv4Address) -> Lease | None:
    """The address's holder, locked until the transaction ends; None if the address is free."""
    row = await conn.fetchrow(
        f"SELECT {LEASE_COLUMNS} FROM leases WHERE ip = $1::inet AND state IN {HOLDING} FOR UPDATE",
        ip,
    )
    return None if row is None else lease_from_row(row)


async def bind(
    conn: DbConnection, lease: Lease, now: datetime, *, hostname: str | None, rack_id: str, expires_at: datetime
) -> Lease:
    """Turn the MAC's offer (or binding) of this address into a binding until ``expires_at``."""
    row = await conn.fetchrow(
        f"""
        UPDATE leases SET state = 'bound', expires_at = $3, updated_at = $4, rack_id = $5,
                          hostname = COALESCE($6, hostname)
         WHERE ip = $1::inet AND mac = $2::macaddr AND state IN {ACTIVE}
        RETURNING {LEASE_COLUMNS}
        """,
        lease.ip,
        lease.mac,
        expires_at,
        now,
        rack_id,
        hostname,
    )
    assert row is not None, "the caller holds the row lock on this lease"
    return lease_from_row(row)


async def release_other_active(
    conn: DbConnection, subnet_id: int, mac: str, keep: IPv4Address, now: datetime
) -> list[Lease]:
    """End the MAC's active leases in the subnet on any address but ``keep`` (it moved to another address)."""
    rows = await conn.fetch(
        f"""
        UPDATE leases SET state = 'released', expires_at = LEAST(expires_at, $4), updated_at = $4
         WHERE subnet_id = $1 AND mac = $2::macaddr AND ip <> $3::inet AND state IN {ACTIVE}
        RETURNING {LEASE_COLUMNS}
        """,
        subnet_id,
        mac,
        keep,
        now,
    )
    return [lease_from_row(row) for row in rows]


async def renew(conn: DbConnection, ip: IPv4Address, mac: str, rack_id: str, now: datetime) -> Lease | None:
    """Extend the MAC's unexpired binding of this address by its subnet's lease time; None if it has none."""
    row = await conn.fetchrow(
        f"""
        UPDATE leases l SET expires_at = $4 + make_interval(secs => s.lease_time_s), updated_at = $4,
                            rack_id = $3
          FROM subnets s
         WHERE s.subnet_id = l.subnet_id AND l.ip = $1::inet AND l.mac = $2::macaddr
           AND l.state = 'bound' AND l.expires_at > $4
        RETURNING {LEASE_COLUMNS_OF_L}
        """,
        ip,
        mac,
        rack_id,
        now,
    )
    return None if row is None else lease_from_row(row)


async def end_active(
    conn: DbConnection,
    ip: IPv4Address,
    mac: str,
    state: LeaseState,
    expires_at: datetime,
    now: datetime,
) -> Lease | None:
    """Move the MAC's offer or binding of this address to ``state`` (released, declined) with a new expiry;
    None if the MAC holds no such lease."""
    row = await conn.fetchrow(
        f"""
        UPDATE leases SET state = $3, expires_at = $4, updated_at = $5
         WHERE ip = $1::inet AND mac = $2::macaddr AND state IN {ACTIVE}
        RETURNING {LEASE_COLUMNS}
        """,
        ip,
        mac,
        state.value,
        expires_at,
        now,
    )
    return None if row is None else lease_from_row(row)


async def current_leases(conn: DbConnection, subnet_ids: list[int], now: datetime) -> list[Lease]:
    """Unexpired offers and bindings in these subnets."""
    rows = await conn.fetch(
        f"""
        SELECT {LEASE_COLUMNS} FROM leases
         WHERE subnet_id = ANY($1::bigint[]) AND state IN {ACTIVE} AND expires_at > $2
         ORDER BY subnet_id, ip
        """,
        subnet_ids,
        now,
    )
    return [lease_from_row(row) for row in rows]


async def list_leases(
    conn: DbConnection, *, subnet_id: int | None, mac: str | None, active_only: bool, now: datetime
) -> list[Lease]:
    """Leases of the subnet and/or the MAC (every lease if neither is given), by subnet and address, oldest
    first; ``active_only`` keeps the unexpired holders (offered, bound, declined)."""
    conditions: list[str] = []
    values: list[object] = []
    for condition, value in (("subnet_id = ${}", subnet_id), ("mac = ${}::macaddr", mac)):
        if value is not None:
            values.append(value)
            conditions.append(condition.format(len(values)))
    if active_only:
        values.append(now)
        conditions.append(f"state IN {HOLDING} AND expires_at > ${len(values)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = await conn.fetch(f"SELECT {LEASE_COLUMNS} FROM leases {where} ORDER BY subnet_id, ip, lease_id", *values)
    return [lease_from_row(row) for row in rows]


# -- many at once (rack-dhcp's batches) -----------------------------------------------------------------------
async def lock_pool(conn: DbConnection, subnet_id: int) -> None:
    """Take the subnet's address pool until the transaction ends: concurrent batches of offers would all pick
    the same lowest free addresses and collide; queued one behind the other, each finds its own at once."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2::integer)", POOL_LOCK_CLASS, subnet_id)


async def latest_of_macs(conn: DbConnection, subnet_id: int, macs: list[str]) -> dict[str, Lease]:
    """``latest_of_mac`` for several MACs in one query; MACs without any lease in the subnet are absent."""
    rows = await conn.fetch(
        f"""
        SELECT DISTINCT ON (mac) {LEASE_COLUMNS} FROM leases
         WHERE subnet_id = $1 AND mac = ANY($2::macaddr[])
         ORDER BY mac, state IN {ACTIVE} DESC, updated_at DESC, lease_id DESC
        """,
        subnet_id,
        macs,
    )
    leases = [lease_from_row(row) for row in rows]
    return {lease.mac: lease for lease in leases}


async def refresh_offers(conn: DbConnection, offers: list[Lease], expires_at: datetime, now: datetime) -> list[Lease]:
    """Hold these offers (same address, same MAC, still offered) until ``expires_at``. Rows are locked in
    address order, as ``bind_held`` does, so concurrent batches never deadlock on each other's rows."""
    if not offers:
        return []
    rows = await conn.fetch(
        f"""
        WITH locked AS (
            SELECT l.lease_id FROM leases l JOIN unnest($1::inet[], $2::macaddr[]) AS o(ip, mac)
                ON l.ip = o.ip AND l.mac = o.mac
             WHERE l.state = 'offered' ORDER BY l.ip FOR UPDATE OF l
        )
        UPDATE leases l SET expires_at = $3, updated_at = $4 FROM locked WHERE l.lease_id = locked.lease_id
        RETURNING {LEASE_COLUMNS_OF_L}
        """,
        [offer.ip for offer in offers],
        [offer.mac for offer in offers],
        expires_at,
        now,
    )
    return [lease_from_row(row) for row in rows]


async def insert_leases(conn: DbConnection, leases: list[Lease], now: datetime) -> list[Lease]:
    """Insert each lease whose address and whose MAC's active slot in the subnet are free; the others (lost to a
    concurrent transaction) are simply not returned."""
    rows = await conn.fetch(
        f"""
        INSERT INTO leases (subnet_id, ip, mac, rack_id, state, hostname, expires_at, created_at, updated_at)
        SELECT subnet_id, ip, mac, rack_id, state, hostname, expires_at, $8, $8
          FROM unnest($1::bigint[], $2::inet[], $3::macaddr[], $4::text[], $5::text[], $6::text[],
                      $7::timestamptz[]) AS n(subnet_id, ip, mac, rack_id, state, hostname, expires_at)
        ON CONFLICT DO NOTHING
        RETURNING {LEASE_COLUMNS}
        """,
        [lease.subnet_id for lease in leases],
        [lease.ip for lease in leases],
        [lease.mac for lease in leases],
        [lease.rack_id for lease in leases],
        [lease.state.value for lease in leases],
        [lease.hostname for lease in leases],
        [lease.expires_at for lease in leases],
        now,
    )
    return [lease_from_row(row) for row in rows]


async def bind_held(conn: DbConnection, bindings: list[Lease], now: datetime) -> list[Lease]:
    """Turn each MAC's offer (or binding) of the address into the binding given (expiry, rack, hostname when
    set); requests whose MAC holds no such lease are not returned. One binding per (address, MAC). Rows are
    locked in address order: two batches binding overlapping leases queue instead of deadlocking."""
    rows = await conn.fetch(
        f"""
        WITH locked AS (
            SELECT l.lease_id, b.expires_at, b.rack_id, b.hostname
              FROM leases l
              JOIN unnest($1::inet[], $2::macaddr[], $3::timestamptz[], $4::text[], $5::text[])
                AS b(ip, mac, expires_at, rack_id, hostname) ON l.ip = b.ip AND l.mac = b.mac
             WHERE l.state IN {ACTIVE} ORDER BY l.ip FOR UPDATE OF l
        )
        UPDATE leases l SET state = 'bound', expires_at = locked.expires_at, updated_at = $6,
                            rack_id = locked.rack_id, hostname = COALESCE(locked.hostname, l.hostname)
          FROM locked WHERE l.lease_id = locked.lease_id
        RETURNING {LEASE_COLUMNS_OF_L}
        """,
        [lease.ip for lease in bindings],
        [lease.mac for lease in bindings],
        [lease.expires_at for lease in bindings],
        [lease.rack_id for lease in bindings],
        [lease.hostname for lease in bindings],
        now,
    )
    return [lease_from_row(row) for row in rows]


async def machines_by_address(
    conn: DbConnection, addresses: Iterable[IPv4Address | IPv6Address]
) -> dict[IPv4Address | IPv6Address, str]:
    """The machine behind each address: a bound, unexpired lease of that IP whose MAC is a machine's boot MAC
    (the address a syslog line came from, a boot file went to)."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT ON (l.ip) l.ip, m.system_id
          FROM leases l JOIN machines m ON m.boot_mac = l.mac
         WHERE l.ip = ANY($1::inet[]) AND l.state = 'bound' AND l.expires_at > now()
         ORDER BY l.ip, l.updated_at DESC
        """,
        [str(address) for address in set(addresses)],
    )
    return {row["ip"]: row["system_id"] for row in rows}
