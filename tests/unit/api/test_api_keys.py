"""Bearer keys: what counts as a presented key, and how long an accepted key is trusted without asking."""

import pytest
from fastapi.security import HTTPAuthorizationCredentials

from metalbus.contracts.apikeys import ApiKeyIdentity
from metalbus_api.auth import ApiKeyCache, key_digest, presented_key
from metalbus_api.errors import Unauthorized

KEY = "mb_k3y1d000_AbCdEfGhIjKlMnOpQrStUvWx"
OTHER_KEY = "mb_k3y1d001_AbCdEfGhIjKlMnOpQrStUvWx"
IDENTITY = ApiKeyIdentity(key_id="k3y1d000", name="ci")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(value: str) -> HTTPAuthorizationCredentials:
    return HTTPAuthorizationCredentials(scheme="Bearer", credentials=value)


def test_a_well_formed_key_is_presented_as_is() -> None:
    assert presented_key(bearer(KEY)) == KEY


def test_no_authorization_header_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="API key is required"):
        presented_key(None)


@pytest.mark.parametrize(
    "value",
    ["nope", "mb_short_AbCdEfGhIjKlMnOpQrStUvWx", "mb_k3y1d000_tooshort", "mb_K3Y1D000_AbCdEfGhIjKlMnOpQrStUvWx",
     f"{KEY} extra", f"x{KEY}"],
)  # fmt: skip
def test_a_malformed_key_is_unauthorized_without_asking_the_region(value: str) -> None:
    with pytest.raises(Unauthorized, match="malformed"):
        presented_key(bearer(value))


def test_an_accepted_key_is_trusted_until_its_ttl_passes() -> None:
    clock = FakeClock()
    cache = ApiKeyCache(ttl_s=30, max_keys=10, clock=clock)
    cache.put(KEY, IDENTITY)
    clock.now += 29.9
    assert cache.get(KEY) == IDENTITY
    clock.now += 0.1
    assert cache.get(KEY) is None
    assert len(cache) == 0


def test_the_cache_answers_only_for_the_exact_key_and_keeps_only_its_digest() -> None:
    cache = ApiKeyCache(ttl_s=30, max_keys=10, clock=FakeClock())
    cache.put(KEY, IDENTITY)
    assert cache.get(OTHER_KEY) is None
    assert cache.get(KEY[:-1] + "X") is None
    assert KEY not in repr(cache._entries)
    assert list(cache._entries) == [key_digest(KEY)]


def test_a_zero_ttl_caches_nothing() -> None:
    cache = ApiKeyCache(ttl_s=0, max_keys=10, clock=FakeClock())
    cache.put(KEY, IDENTITY)
    assert cache.get(KEY) is None


def test_a_full_cache_forgets_its_oldest_key_first() -> None:
    cache = ApiKeyCache(ttl_s=30, max_keys=2, clock=FakeClock())
    keys = [f"mb_k3y1d00{n}_AbCdEfGhIjKlMnOpQrStUvWx" for n in range(3)]
    for key in keys:
        cache.put(key, IDENTITY)
    assert [cache.get(key) for key in keys] == [None, IDENTITY, IDENTITY]
    assert len(cache) == 2
