"""The upstream stream's field and size rules at their edges (test_sse.py has the stream forms,
test_stream_rules.py the endings): field names are case-sensitive, a field's value loses only a
space after its colon, and an event one byte past the size limit stops the decoding whatever
its line ends: rules a mutation of the code showed unprotected (docs/reliability.md,
"Mutation testing").
"""

from __future__ import annotations

import pytest

from chat.upstream.sse import SSEDecoder, SSEEvent


def _read(*chunks: bytes, max_event_bytes: int = 1024) -> tuple[list[SSEEvent], SSEDecoder]:
    decoder = SSEDecoder(max_event_bytes=max_event_bytes)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return events, decoder


@pytest.mark.parametrize("line", [b"DATA: shout", b"Data: shout"])
def test_field_names_are_case_sensitive_so_a_data_field_in_capitals_is_ignored(
    line: bytes,
) -> None:
    events, decoder = _read(line + b"\ndata: x\n\n")
    assert events == [SSEEvent(data="x")]
    assert decoder.error is None


def test_a_field_without_a_space_after_its_colon_keeps_its_whole_value() -> None:
    events, _decoder = _read(b"event:delta\nid:42\nretry:3000\ndata:x\n\n")
    assert events == [SSEEvent(data="x", event="delta", id="42", retry=3000)]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_an_event_one_byte_past_the_limit_stops_the_decoding_whatever_its_line_ends(
    eol: bytes,
) -> None:
    # "data: 12345" and the blank line: 11 + 1 and 0 + 1 bytes, each line end counting one.
    events, decoder = _read(b"data: 12345" + eol + eol, max_event_bytes=12)
    assert events == []
    assert decoder.error == "an event longer than 12 bytes"
