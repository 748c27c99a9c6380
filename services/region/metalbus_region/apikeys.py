"""API keys: make one (the whole key is shown exactly once) and tell whose a presented key is.

A key is ``mb_<key_id>_<secret>``. Only the SHA-256 of the secret is stored, and a presented secret's digest is
compared with it in constant time. Malformed, unknown, revoked and wrong keys are all Forbidden; a key never
reaches a log line or an error message (only its key id may).
"""

import hmac
import re
import secrets
import string

import structlog

from metalbus.contracts.apikeys import API_KEY_PATTERN, ApiKeyCheck, ApiKeyCreate, ApiKeyCreated, ApiKeyIdentity
from metalbus.contracts.errors import Conflict, Forbidden
from metalbus.subjects import API_KEY_CHECK, API_KEY_CREATE
from metalbus_region import apikey_store
from metalbus_region.context import RegionContext, Route

log = structlog.get_logger("metalbus.region.apikeys")

KEY_ID_ALPHABET = string.ascii_lowercase + string.digits
KEY_ID_LENGTH = 8
_PREFIX = "mb_"
_KEY = re.compile(API_KEY_PATTERN)
# Compared with when the key id is unknown, so that an unknown id costs what a wrong secret costs.
_NOBODYS_DIGEST = apikey_store.secret_digest("the secret of no key")


def new_key_id() -> str:
    return "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


def compose_key(key_id: str, secret: str) -> str:
    return f"{_PREFIX}{key_id}_{secret}"


def split_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None. The secret may itself hold underscores."""
    if not _KEY.fullmatch(key):
        return None
    key_id_end = len(_PREFIX) + KEY_ID_LENGTH
    return key[len(_PREFIX) : key_id_end], key[key_id_end + 1 :]


class ApiKeyHandlers:
    def __init__(self, ctx: RegionContext) -> None:
        self._ctx = ctx

    def routes(self) -> list[Route]:
        return [(API_KEY_CREATE, self.create), (API_KEY_CHECK, self.check)]

    async def create(self, request: ApiKeyCreate) -> ApiKeyCreated:
        secret = secrets.token_urlsafe(24)
        async with self._ctx.database.connection() as conn:
            for _ in range(5):
                key_id = new_key_id()
                created_at = await apikey_store.insert_key(conn, key_id, request.name, secret)
                if created_at is not None:
                    break
            else:
                raise Conflict("could not find a free API key id")
        log.info("apikey.created", key_id=key_id, name=request.name)
        return ApiKeyCreated(key_id=key_id, name=request.name, key=compose_key(key_id, secret), created_at=created_at)

    async def check(self, request: ApiKeyCheck) -> ApiKeyIdentity:
        parts = split_key(request.key)
        if parts is None:
            raise Forbidden("malformed API key: expected mb_<key id>_<secret>")
        key_id, secret = parts
        async with self._ctx.database.connection() as conn:
            stored = await apikey_store.find_key(conn, key_id)
        expected = _NOBODYS_DIGEST if stored is None else stored.secret_sha256
        secret_matches = hmac.compare_digest(apikey_store.secret_digest(secret), expected)
        if stored is None or not secret_matches:
            raise Forbidden("unknown API key or wrong secret")
        if stored.revoked:
            raise Forbidden(f"API key {key_id} is revoked")
        return ApiKeyIdentity(key_id=stored.key_id, name=stored.name)


def routes(ctx: RegionContext) -> list[Route]:
    return ApiKeyHandlers(ctx).routes()
