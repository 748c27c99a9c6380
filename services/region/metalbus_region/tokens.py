"""Per-machine metadata credentials (OAuth 1.0a PLAINTEXT, as MAAS): issue them, check them.

The secret is stored as issued (as MAAS does): the region must hand it to the machine again in every boot
config it renders. Checks compare in constant time. A token works only for its own machine, and not after it
expired or was revoked (commissioning again revokes the old ones).
"""

import hmac
import secrets
from datetime import datetime

from asyncpg import Record

from metalbus.contracts.errors import Forbidden
from metalbus.contracts.machines import MachineStatus
from metalbus.contracts.metadata import OAuthCredentials
from metalbus.db.pool import DbConnection


async def issue_token(conn: DbConnection, system_id: str, *, expires_at: datetime | None) -> OAuthCredentials:
    """New credentials for ``system_id``; earlier tokens of that machine are revoked."""
    await revoke_tokens(conn, system_id)
    credentials = OAuthCredentials(
        consumer_key=secrets.token_urlsafe(15),
        token_key=secrets.token_urlsafe(15),
        token_secret=secrets.token_urlsafe(24),
    )
    await conn.execute(
        """
        INSERT INTO metadata_tokens (token_key, consumer_key, token_secret, system_id, expires_at)
        VALUES ($1, $2, $3, $4, $5)
        """,
        credentials.token_key,
        credentials.consumer_key,
        credentials.token_secret,
        system_id,
        expires_at,
    )
    return credentials


async def machine_for_token(conn: DbConnection, credentials: OAuthCredentials) -> str:
    """The system id the credentials belong to, or Forbidden (unknown, wrong secret, expired, revoked)."""
    row = await conn.fetchrow(
        """
        SELECT system_id, consumer_key, token_secret,
               (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())) AS valid
          FROM metadata_tokens WHERE token_key = $1
        """,
        credentials.token_key,
    )
    if row is None or not _secrets_match(row, credentials) or not row["valid"]:
        raise Forbidden("metadata credentials are not valid")
    return str(row["system_id"])


def _secrets_match(row: Record, credentials: OAuthCredentials) -> bool:
    """The token row's secret and consumer key are the credentials' (compared in constant time)."""
    return hmac.compare_digest(row["token_secret"], credentials.token_secret) and hmac.compare_digest(
        row["consumer_key"], credentials.consumer_key
    )


async def current_token(conn: DbConnection, system_id: str) -> OAuthCredentials | None:
    """The machine's valid credentials (newest), to render into its boot config; None if it has none."""
    row = await conn.fetchrow(
        """
        SELECT consumer_key, token_key, token_secret FROM metadata_tokens
         WHERE system_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
         ORDER BY created_at DESC LIMIT 1
        """,
        system_id,
    )
    if row is None:
        return None
    return OAuthCredentials(
        consumer_key=row["consumer_key"], token_key=row["token_key"], token_secret=row["token_secret"]
    )


async def machine_whose_run_this_token_ended(
    conn: DbConnection, credentials: OAuthCredentials, *, within_s: float
) -> tuple[str, MachineStatus] | None:
    """The machine (and the status it ended in) whose commissioning ended at most ``within_s`` ago with these
    credentials, the token revoked in that very transition and no later change of status: a final signal sent
    again after its answer was lost."""
    row = await conn.fetchrow(
        """
        SELECT t.system_id, t.consumer_key, t.token_secret, m.status
          FROM metadata_tokens t JOIN machines m ON m.system_id = t.system_id
         WHERE t.token_key = $1 AND t.revoked_at = m.status_changed_at
           AND t.revoked_at > now() - make_interval(secs => $2)
        """,
        credentials.token_key,
        within_s,
    )
    if row is None or not _secrets_match(row, credentials):
        return None
    return str(row["system_id"]), MachineStatus(row["status"])


async def revoke_tokens(conn: DbConnection, system_id: str) -> None:
    await conn.execute(
        "UPDATE metadata_tokens SET revoked_at = now() WHERE system_id = $1 AND revoked_at IS NULL", system_id
    )
