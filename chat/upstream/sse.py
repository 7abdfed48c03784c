"""An incremental Server-Sent Events decoder for the upstream's chat completion streams.

It follows the parsing rules of the OpenAI Python client's SSE decoder (the client Chutes'
OpenAI-compatible API is written against), plus two Chutes quirks:

- a failure mid-stream is written as a bare JSON line with no field name,
  `{"error": "Unhandled exception during response stream: ..."}`; a strict SSE parser would drop
  it as an unknown field, so it is surfaced as an event named `error` with `bare=True`;
- a stream may end without `data: [DONE]`; `done` stays False and `truncated` tells the caller.

Lines are found on bytes and only then decoded, so a multi-byte UTF-8 character split across
network reads is never mangled, and any way of splitting the input yields the same events.

A line or an event longer than `max_event_bytes` ends the decoding with `error` set: the events
before it are kept, and memory stays bounded whatever the other end sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DONE_MARKER = "[DONE]"

# Far beyond any chunk of a chat completion (a whole reply is a few hundred kilobytes even as
# JSON escapes), and small enough that an endless line cannot exhaust memory.
MAX_EVENT_BYTES = 16 * 1024 * 1024

_LINE_END = re.compile(rb"\r\n|\r|\n")
# A legal SSE field name looks like a word; anything else (a `{` or spaces) is not SSE at all.
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    # True for a line the upstream wrote without any SSE field (Chutes' mid-stream error).
    bare: bool = False

    @property
    def is_error(self) -> bool:
        return self.bare or self.event == "error"


class SSEDecoder:
    """Feed raw bytes with `feed()`, call `close()` at end of stream; both return new events."""

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = bytearray()
        self._data: list[str] = []
        # Bytes of the lines of the event being read (each line counted with one line end).
        self._event_size = 0
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._first_line = True
        self.done = False
        self.closed = False
        # Why decoding stopped before the end, if it did (the stream is not SSE any more).
        self.error: str | None = None

    @property
    def truncated(self) -> bool:
        """True once the stream has ended without `[DONE]`."""
        return self.closed and not self.done

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self.done or self.closed or self.error is not None or not chunk:
            return []
        buffer = self._buffer
        # A CR at the end of the buffer waits to see whether an LF follows.
        waiting = buffer.endswith(b"\r")
        buffer += chunk
        if not waiting and b"\n" not in chunk and b"\r" not in chunk:
            # No line ends: only the current line grew. Looking at the new bytes alone keeps a
            # long line arriving in many reads linear.
            self._check_partial_line()
            return []
        return self._drain(final=False)

    def close(self) -> list[SSEEvent]:
        """Signal end of stream: surfaces a trailing bare line and a pending complete event."""
        if self.closed:
            return []
        events = [] if self.done or self.error is not None else self._drain(final=True)
        if not self.done and self.error is None:
            self._dispatch(events)
        self.closed = True
        self._buffer.clear()
        return events

    def _check_partial_line(self) -> None:
        # The unfinished line counts as it is so far: never more than it will once finished,
        # so any way of splitting the input stops at the same line.
        if self._event_size + len(self._buffer) > self.max_event_bytes and not self.done:
            self._overflow()

    def _overflow(self) -> None:
        self.error = f"an event longer than {self.max_event_bytes} bytes"
        self._buffer.clear()
        self._data = []

    def _drain(self, *, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buffer = self._buffer
        pos = 0
        size = len(buffer)
        # Nearly every stream ends its lines with LF alone; find() is much cheaper than the regex.
        lf_only = b"\r" not in buffer
        while not self.done:
            if lf_only:
                end = buffer.find(b"\n", pos)
                if end < 0:
                    break
                after = end + 1
            else:
                match = _LINE_END.search(buffer, pos)
                if match is None:
                    break
                # A lone CR at the very end may be the first half of CRLF: wait for the next byte.
                if match.group() == b"\r" and match.end() == size and not final:
                    break
                end, after = match.start(), match.end()
            self._event_size += end - pos + 1
            if self._event_size > self.max_event_bytes:
                self._overflow()
                return events
            self._line(self._decode(buffer[pos:end]), events)
            pos = after
        if final and not self.done and pos < size:
            # An unterminated last line: only a bare line or [DONE] is worth keeping, a partial
            # `data:` line is a truncated JSON document.
            text = self._decode(buffer[pos:])
            pos = size
            if self._is_bare(text) or text.strip() in (
                f"data: {DONE_MARKER}",
                f"data:{DONE_MARKER}",
            ):
                self._line(text, events)
        del buffer[:pos]
        self._check_partial_line()
        return events

    def _decode(self, raw: bytes | bytearray) -> str:
        text = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            text = text.removeprefix("\ufeff")
        return text

    @staticmethod
    def _is_bare(line: str) -> bool:
        if not line or line.startswith(":"):
            return False
        name = line.partition(":")[0]
        return _FIELD_NAME.fullmatch(name) is None

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line.startswith("data:"):
            # The line of every token: skip the field-name checks, which copy the line twice.
            self._data.append(line[6:] if line.startswith("data: ") else line[5:])
            return
        if line.startswith(":"):
            return
        if self._is_bare(line):
            events.append(SSEEvent(data=line.strip(), event="error", bare=True))
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit() and len(value) <= 10:
            # ASCII only: str.isdigit() also accepts digits int() refuses, such as "²".
            self._retry = int(value)
        # Other well-formed field names are ignored, as the SSE specification requires.

    def _dispatch(self, events: list[SSEEvent]) -> None:
        data, event = self._data, self._event
        self._data = []
        self._event_size = 0
        self._event = ""
        if not data:
            return
        joined = "\n".join(data)
        if joined == DONE_MARKER:
            self.done = True
            return
        events.append(
            SSEEvent(data=joined, event=event or "message", id=self._last_id, retry=self._retry)
        )
