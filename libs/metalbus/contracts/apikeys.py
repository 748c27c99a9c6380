"""API keys: the operator's and automation's credentials for the HTTP API, stored hashed by the region.

A key is ``mb_<key_id>_<secret>``; the region keeps ``key_id`` and a SHA-256 of the secret, and shows the whole
key exactly once, when it is created.
"""

from datetime import datetime

from pydantic import Field

from metalbus.contracts.base import Message, examples

API_KEY_PATTERN = r"^mb_[a-z0-9]{8}_[A-Za-z0-9_-]{20,64}$"


class ApiKeyCreate(Message):
    model_config = examples({"schema_version": 1, "name": "ci-pipeline"})

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9 ._@-]+$")


class ApiKeyCreated(Message):
    """The only message that ever carries the whole key."""

    model_config = examples(
        {
            "schema_version": 1,
            "key_id": "k3y1d000",
            "name": "ci-pipeline",
            "key": "mb_k3y1d000_AbCdEfGhIjKlMnOpQrStUvWx",
            "created_at": "2026-11-25T06:00:00Z",
        }
    )

    key_id: str
    name: str
    key: str = Field(repr=False)
    created_at: datetime


class ApiKeyCheck(Message):
    """Asked by the api for each new bearer token it sees (it caches the answer briefly)."""

    model_config = examples({"schema_version": 1, "key": "mb_k3y1d000_AbCdEfGhIjKlMnOpQrStUvWx"})

    key: str = Field(max_length=200, repr=False)


class ApiKeyIdentity(Message):
    """Who a valid key belongs to; an unknown, malformed or revoked key is a typed forbidden instead."""

    model_config = examples({"schema_version": 1, "key_id": "k3y1d000", "name": "ci-pipeline"})

    key_id: str
    name: str
