from __future__ import annotations

import json
import random

import pytest

from chat.upstream.sse import SSEDecoder, SSEEvent


def decode(*parts: bytes) -> tuple[list[SSEEvent], bool, bool]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for part in parts:
        events += decoder.feed(part)
    events += decoder.close()
    return events, decoder.done, decoder.truncated


def chunk(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}, ensure_ascii=False)


USAGE = json.dumps(
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 2,
            "total_tokens": 11,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    }
)
ERROR_LINE = '{"error": "Unhandled exception during response stream: boom"}'


def stream(lines: list[str], eol: str = "\n") -> bytes:
    return eol.join(lines).encode()


# Every documented stream form, with the data of the events it must yield.
FORMS: dict[str, tuple[bytes, list[str]]] = {
    "lf": (
        stream([f"data: {chunk('Hé')}", "", f"data: {chunk('llo')}", "", "data: [DONE]", "", ""]),
        [chunk("Hé"), chunk("llo")],
    ),
    "crlf": (
        stream(
            [f"data: {chunk('a')}", "", f"data: {chunk('b')}", "", "data: [DONE]", "", ""], "\r\n"
        ),
        [chunk("a"), chunk("b")],
    ),
    "cr": (
        stream([f"data: {chunk('a')}", "", "data: [DONE]", "", ""], "\r"),
        [chunk("a")],
    ),
    "mixed": (
        f"data: {chunk('a')}\r\n\ndata: {chunk('b')}\r\rdata: {chunk('c')}\n\r\n"
        "data: [DONE]\r\n\r\n".encode(),
        [chunk("a"), chunk("b"), chunk("c")],
    ),
    "comments": (
        stream([": ping", "", f"data: {chunk('a')}", ": ping", "", ":", "", "data: [DONE]", ""]),
        [chunk("a")],
    ),
    "no_space": (
        stream([f"data:{chunk('a')}", "", "data:[DONE]", "", ""]),
        [chunk("a")],
    ),
    "multi_line_data": (
        stream(["data: first", "data:second", "data", "", "data: [DONE]", "", ""]),
        ["first\nsecond\n"],
    ),
    "utf8": (
        stream([f"data: {chunk('日本語 🙂 — café')}", "", "data: [DONE]", "", ""]),
        [chunk("日本語 🙂 — café")],
    ),
    "usage_chunk": (
        stream([f"data: {chunk('a')}", "", f"data: {USAGE}", "", "data: [DONE]", "", ""]),
        [chunk("a"), USAGE],
    ),
    "bare_error_line": (
        stream([f"data: {chunk('a')}", "", ERROR_LINE, ""]),
        [chunk("a"), ERROR_LINE],
    ),
    "bare_error_line_unterminated": (
        stream([f"data: {chunk('a')}", "", ERROR_LINE]),
        [chunk("a"), ERROR_LINE],
    ),
    "no_done": (
        stream([f"data: {chunk('a')}", "", f"data: {chunk('b')}", "", ""]),
        [chunk("a"), chunk("b")],
    ),
    "after_done_ignored": (
        stream([f"data: {chunk('a')}", "", "data: [DONE]", "", f"data: {chunk('late')}", ""]),
        [chunk("a")],
    ),
    "event_and_id_fields": (
        stream(["event: message", "id: 7", "retry: 100", f"data: {chunk('a')}", "", ""]),
        [chunk("a")],
    ),
    "bom": (
        b"\xef\xbb\xbf" + stream([f"data: {chunk('a')}", "", "data: [DONE]", "", ""]),
        [chunk("a")],
    ),
}


@pytest.mark.parametrize("name", FORMS)
def test_each_stream_form_yields_its_events(name: str) -> None:
    raw, expected = FORMS[name]
    events, _done, _truncated = decode(raw)
    assert [event.data for event in events] == expected


@pytest.mark.parametrize("name", FORMS)
def test_a_split_at_every_byte_position_yields_the_same_events(name: str) -> None:
    raw, _expected = FORMS[name]
    whole = decode(raw)
    for position in range(len(raw) + 1):
        assert decode(raw[:position], raw[position:]) == whole, f"split at byte {position}"


@pytest.mark.parametrize("name", FORMS)
def test_byte_by_byte_and_random_splits_yield_the_same_events(name: str) -> None:
    raw, _expected = FORMS[name]
    whole = decode(raw)
    assert decode(*(raw[i : i + 1] for i in range(len(raw)))) == whole
    rng = random.Random(name)
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(raw) + 1), k=min(6, len(raw) + 1)))
        parts = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        assert decode(*parts) == whole


def test_done_marks_the_stream_complete() -> None:
    _events, done, truncated = decode(FORMS["lf"][0])
    assert done and not truncated


def test_a_stream_without_done_is_flagged_truncated() -> None:
    _events, done, truncated = decode(FORMS["no_done"][0])
    assert not done and truncated


def test_the_bare_error_line_is_an_error_event() -> None:
    events, done, _truncated = decode(FORMS["bare_error_line"][0])
    assert not events[0].is_error
    assert events[1].is_error and events[1].bare
    assert json.loads(events[1].data)["error"].startswith("Unhandled exception")
    assert not done


def test_an_event_field_named_error_is_an_error_event_too() -> None:
    events, _done, _truncated = decode(b'event: error\ndata: {"message": "x"}\n\n')
    assert events[0].is_error and not events[0].bare


def test_a_truncated_data_line_at_the_end_is_dropped() -> None:
    events, done, truncated = decode(f'data: {chunk("a")}\n\ndata: {{"choi'.encode())
    assert [event.data for event in events] == [chunk("a")]
    assert truncated and not done


def test_a_complete_event_without_the_final_blank_line_is_kept() -> None:
    events, _done, truncated = decode(f"data: {chunk('a')}\n".encode())
    assert [event.data for event in events] == [chunk("a")]
    assert truncated


def test_done_without_the_final_newline_still_counts() -> None:
    _events, done, _truncated = decode(b"data: [DONE]")
    assert done


def test_utf8_split_inside_a_character_survives() -> None:
    raw = "data: 🙂é\n\n".encode()
    emoji_middle = raw.index("🙂".encode()) + 2
    events, _done, _truncated = decode(raw[:emoji_middle], raw[emoji_middle:])
    assert events[0].data == "🙂é"


def test_unknown_fields_are_ignored_and_event_names_kept() -> None:
    events, _done, _truncated = decode(b"foo: bar\nevent: delta\ndata: x\n\n")
    assert events == [SSEEvent(data="x", event="delta")]


def test_feeding_after_close_yields_nothing() -> None:
    decoder = SSEDecoder()
    decoder.close()
    assert decoder.feed(b"data: x\n\n") == []
    assert decoder.close() == []


@pytest.mark.parametrize("value", ["²", "٣", "9" * 5000])
def test_a_retry_field_that_is_not_ascii_digits_is_ignored(value: str) -> None:
    # str.isdigit() accepts "²", which int() refuses; the spec allows ASCII digits only.
    events, _done, _truncated = decode(f"retry: {value}\ndata: x\n\n".encode())
    assert events == [SSEEvent(data="x")]


def test_a_line_longer_than_the_limit_stops_the_decoding_keeping_what_came_before() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    events = decoder.feed(b"data: first\n\n" + b"data: " + b"x" * 40)
    assert [event.data for event in events] == ["first"]
    assert decoder.error is None
    assert decoder.feed(b"x" * 40) == []
    assert decoder.error is not None
    assert decoder.feed(b"\n\ndata: later\n\n") == []
    assert decoder.close() == []


def test_an_event_of_many_lines_counts_all_of_them_against_the_limit() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    assert decoder.feed(b"data: 0123456789\n" * 3) == []
    assert decoder.error is None
    decoder.feed(b"data: 0123456789\n" * 2)
    assert decoder.error is not None


def test_whatever_follows_done_in_the_same_read_is_not_measured() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    assert decoder.feed(b"data: [DONE]\n\n" + b"x" * 100) == []
    assert decoder.done and decoder.error is None
