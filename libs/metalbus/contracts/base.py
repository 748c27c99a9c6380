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

    # A message without the field is of the version its class was built with: the field's default. (A model
    # validator in "before" mode would add it instead, but it makes pydantic turn every JSON object into a dict
    # for Python first, which costs a quarter of decoding a batch of leases.)
    schema_version: int = Field(default=1, ge=1, description="Schema version of this message type.")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        default = cls.model_fields["schema_version"].default
        if default != cls.SCHEMA_VERSION:
            raise TypeError(
                f"{cls.__name__}.SCHEMA_VERSION is {cls.SCHEMA_VERSION}: declare "
                f"schema_version: int = Field(default={cls.SCHEMA_VERSION}, ge=1) too (it defaults to {default})"
            )

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
