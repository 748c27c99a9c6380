"""The base every bus message derives from: strict JSON models that carry their schema version."""

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Message(BaseModel):
    """A message on the bus.

    Every message carries ``schema_version``. A receiver accepts any version up to the one it was built
    with (older senders are fine) and ignores unknown fields (newer senders may add optional ones); a
    message from a newer schema version than the receiver knows is refused with a clear error.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    SCHEMA_VERSION: ClassVar[int] = 1

    schema_version: int = Field(default=1, ge=1, description="Schema version of this message type.")

    @model_validator(mode="before")
    @classmethod
    def _default_version(cls, data: Any) -> Any:
        if isinstance(data, dict) and "schema_version" not in data:
            return {**data, "schema_version": cls.SCHEMA_VERSION}
        return data

    @model_validator(mode="after")
    def _known_version(self) -> Self:
        if self.schema_version > self.SCHEMA_VERSION:
            raise ValueError(
                f"{type(self).__name__} schema_version {self.schema_version} is newer than the supported "
                f"{self.SCHEMA_VERSION}"
            )
        return self

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json_bytes(cls, payload: bytes) -> Self:
        return cls.model_validate_json(payload)


def examples(*items: dict[str, Any]) -> ConfigDict:
    """Model config carrying examples: they document the AsyncAPI output and feed the round-trip tests."""
    return ConfigDict(json_schema_extra={"examples": list(items)})
