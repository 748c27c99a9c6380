"""Remembered local replies: the same query bytes (all but the 2-byte id) get the same reply bytes until the zone
changes, so the hot path is one dictionary lookup. Rotating answers keep one reply per turn of the rotation."""

from dataclasses import dataclass

QUERY_ID_SIZE = 2
MAX_REMEMBERED = 8192


@dataclass
class RememberedReply:
    """The reply without its id: one per turn of the name's rotation (``None`` until first built)."""

    name: str
    qtype: int
    rcode_name: str
    tails: list[bytes | None]

    @property
    def rotating(self) -> bool:
        return len(self.tails) > 1


class ReplyCache:
    """Per payload limit (UDP, TCP) and zone generation; cleared whole when the zone changes or it is full."""

    def __init__(self) -> None:
        self.generation = -1
        self._by_limit: dict[int, dict[bytes, RememberedReply]] = {}

    def lookup(self, data: bytes, limit: int, generation: int) -> RememberedReply | None:
        if generation != self.generation:
            self._by_limit.clear()
            self.generation = generation
            return None
        remembered = self._by_limit.get(limit)
        return None if remembered is None else remembered.get(data[QUERY_ID_SIZE:])

    def remember(self, data: bytes, limit: int, entry: RememberedReply) -> None:
        remembered = self._by_limit.setdefault(limit, {})
        if len(remembered) >= MAX_REMEMBERED:
            remembered.clear()
        remembered[data[QUERY_ID_SIZE:]] = entry
