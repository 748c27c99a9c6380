"""Server-Sent Events decoding: lines of a ``text/event-stream`` in, complete events out (no I/O)."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


@dataclass
class SseDecoder:
    """Feed it one line at a time (without the line ending); a blank line completes an event.

    Follows the WHATWG rules that matter here: ``:`` lines are comments (keep-alives), ``data`` lines join with
    ``\\n``, one leading space after the colon is dropped, an event with no data is not dispatched, and the last
    ``id`` seen is remembered for resuming with ``Last-Event-ID``.
    """

    last_event_id: str | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _has_data: bool = False

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data, has_data = self._event or "message", "\n".join(self._data), self._has_data
        self._event, self._data, self._has_data = "", [], False
        if not has_data:
            return None
        return ServerSentEvent(event=event, data=data, id=self.last_event_id)


def decode_lines(lines: Iterable[str], decoder: SseDecoder | None = None) -> Iterator[ServerSentEvent]:
    decoder = decoder or SseDecoder()
    for line in lines:
        event = decoder.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event
