"""Bearer API keys: the dependency every route but health takes, and the short-lived cache of accepted keys.

A key is ``mb_<key_id>_<secret>``. A malformed key is refused without asking anyone; any other is checked with
the region (``region.apikeys.check``) and, once accepted, trusted for ``auth_cache_ttl_s`` under a SHA-256 of the
key, so the plain key is not kept in memory longer than the request and a request usually costs no round trip.
Refusals are not cached: a key created a moment ago works at once.
"""

import hashlib
import re
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from metalbus.contracts.apikeys import API_KEY_PATTERN, ApiKeyCheck, ApiKeyIdentity
from metalbus.contracts.errors import BadRequest, Forbidden, NotFound
from metalbus.subjects import API_KEY_CHECK
from metalbus_api.errors import Unauthorized
from metalbus_api.region_client import Region

_KEY = re.compile(API_KEY_PATTERN)

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="mb_<key_id>_<secret>",
    description="An API key made with `metalbus admin` (region subject region.apikeys.create).",
)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyCache:
    """Accepted keys by digest, each until its expiry; the oldest entry goes first when full."""

    def __init__(self, *, ttl_s: float, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._clock = clock
        self._entries: dict[str, tuple[ApiKeyIdentity, float]] = {}

    def get(self, key: str) -> ApiKeyIdentity | None:
        digest = key_digest(key)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        identity, expires_at = entry
        if self._clock() >= expires_at:
            del self._entries[digest]
            return None
        return identity

    def put(self, key: str, identity: ApiKeyIdentity) -> None:
        if self._ttl_s <= 0:
            return
        digest = key_digest(key)
        self._entries.pop(digest, None)
        while len(self._entries) >= self._max_keys:
            del self._entries[next(iter(self._entries))]
        self._entries[digest] = (identity, self._clock() + self._ttl_s)

    def __len__(self) -> int:
        return len(self._entries)


def presented_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The key of an ``Authorization: Bearer mb_…`` header, or Unauthorized saying what is wrong."""
    if credentials is None:
        raise Unauthorized("an API key is required: Authorization: Bearer mb_<key_id>_<secret>")
    if not _KEY.match(credentials.credentials):
        raise Unauthorized("malformed API key: expected mb_<key_id>_<secret>")
    return credentials.credentials


async def require_api_key(
    request: Request,
    region: Region,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> ApiKeyIdentity:
    key = presented_key(credentials)
    cache: ApiKeyCache = request.app.state.api_keys
    identity = cache.get(key)
    if identity is None:
        try:
            identity = await region.ask(API_KEY_CHECK, ApiKeyCheck(key=key))
        except (Forbidden, NotFound, BadRequest) as error:
            raise Unauthorized("API key not valid") from error
        cache.put(key, identity)
    return identity


ApiKey = Annotated[ApiKeyIdentity, Depends(require_api_key)]
