"""API keys through the bus against a real region, NATS and PostgreSQL: made once, checked, stored only hashed."""

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from metalbus.bus import Bus
from metalbus.contracts.apikeys import API_KEY_PATTERN, ApiKeyCheck, ApiKeyCreate, ApiKeyCreated
from metalbus.contracts.errors import Forbidden
from metalbus.subjects import API_KEY_CHECK, API_KEY_CREATE
from tests.conftest import NatsServer
from tests.integration.test_machines import database, region


def secret_of(created: ApiKeyCreated) -> str:
    prefix = f"mb_{created.key_id}_"
    assert created.key.startswith(prefix)
    return created.key[len(prefix) :]


async def check(bus: Bus, key: str) -> str:
    """The name of the key's owner, as the region tells the api."""
    identity = await bus.request(API_KEY_CHECK, ApiKeyCheck(key=key), timeout=5)
    return f"{identity.key_id}:{identity.name}"


async def test_a_created_key_checks_as_its_owner_and_only_a_digest_of_its_secret_is_stored(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    with capture_logs() as logs:
        async with region(nats_server, database_dsn, bus):
            created = await bus.request(API_KEY_CREATE, ApiKeyCreate(name="ci-pipeline"), timeout=5)
            other = await bus.request(API_KEY_CREATE, ApiKeyCreate(name="operator@lab"), timeout=5)
            owners = [await check(bus, created.key), await check(bus, other.key)]
    assert re.fullmatch(API_KEY_PATTERN, created.key) and re.fullmatch(API_KEY_PATTERN, other.key)
    assert re.fullmatch(r"[a-z0-9]{8}", created.key_id) and created.key_id != other.key_id
    assert created.name == "ci-pipeline"
    assert abs(created.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert owners == [f"{created.key_id}:ci-pipeline", f"{other.key_id}:operator@lab"]
    secret = secret_of(created)
    assert len(secret) == 32  # secrets.token_urlsafe(24)
    assert secret not in repr(logs) and secret_of(other) not in repr(logs)
    assert any(entry["event"] == "apikey.created" and entry["key_id"] == created.key_id for entry in logs)
    async with database(database_dsn) as conn:
        row = await conn.fetchrow(
            "SELECT name, secret_sha256, revoked_at, row_to_json(k)::text AS whole FROM api_keys k WHERE key_id = $1",
            created.key_id,
        )
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 2
    assert (row["name"], row["revoked_at"]) == ("ci-pipeline", None)
    assert row["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in row["whole"]


async def test_wrong_unknown_malformed_and_revoked_keys_are_forbidden(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        created = await bus.request(API_KEY_CREATE, ApiKeyCreate(name="ci-pipeline"), timeout=5)
        secret = secret_of(created)
        wrong_secret = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")
        unknown_id = f"mb_{'0' * 8 if created.key_id != '0' * 8 else '1' * 8}_{secret}"
        malformed = [
            f"mb_{created.key_id}_{secret[:19]}",
            f"Bearer {created.key}",
            "MB" + created.key[2:],
            created.key + "\n",
        ]
        refusals: dict[str, str] = {}
        for key in (wrong_secret, unknown_id, *malformed):
            with pytest.raises(Forbidden) as refused:
                await check(bus, key)
            refusals[key] = refused.value.message
        valid_before_revoking = await check(bus, created.key)
        async with database(database_dsn) as conn:
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", created.key_id)
        with pytest.raises(Forbidden, match=f"API key {created.key_id} is revoked") as revoked:
            await check(bus, created.key)
    assert valid_before_revoking == f"{created.key_id}:ci-pipeline"
    assert refusals[wrong_secret] == refusals[unknown_id] == "unknown API key or wrong secret"
    assert all(refusals[key].startswith("malformed API key") for key in malformed)
    for message in (*refusals.values(), revoked.value.message):
        assert secret not in message
