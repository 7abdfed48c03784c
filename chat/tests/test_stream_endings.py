"""How a streamed reply may end, and what the reader makes of each ending, against the stand-in
over loopback.

Once a `finish_reason` arrived the reply is whole: whatever happens to the rest of the body
(no [DONE], the connection closed or reset, the chunked encoding cut inside a chunk, silence,
with or without the usage chunk, with or without half a line) it ends with its text, the usage
if it came, and `Finish`. Before a `finish_reason`, the same endings are errors.
"""

from __future__ import annotations

import pytest

from chat.testing.fakeupstream import FakeUpstream, delta_chunk, sse_event, usage_numbers
from chat.tests.fixtures_upstream import (
    MODEL,
    REASONING_MODEL,
    chat_body,
    collect,
    config_for,
)
from chat.upstream.client import Finish, TextDelta, Usage
from chat.upstream.config import UpstreamConfig

TEXT = [
    sse_event(delta_chunk({"role": "assistant", "content": "A whole "})),
    sse_event(delta_chunk({"content": "answer."})),
]
FINISH = sse_event(delta_chunk({}, finish_reason="stop"))
USAGE = sse_event(delta_chunk(usage=usage_numbers(11, 2)))
PARTIAL_LINE = b'data: {"choices": [], "usa'

# The ways a body can end without [DONE]: `mid` faults of the stand-in. cut: the chunked body
# ends cleanly; drop: the connection closes; reset: TCP RST; torn: the connection closes inside
# an HTTP chunk; stall: silence until the idle timeout.
ENDINGS = ["cut", "drop", "reset", "torn", "stall"]


def config_with_short_idle(fake: FakeUpstream) -> UpstreamConfig:
    return config_for(fake, idle_timeout=0.3)


USAGES = [pytest.param(True, id="usage"), pytest.param(False, id="no-usage")]
TAILS = [pytest.param(b"", id="no-tail"), pytest.param(PARTIAL_LINE, id="partial-line")]


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("with_usage", USAGES)
@pytest.mark.parametrize("ending", ENDINGS)
async def test_after_a_finish_reason_every_ending_completes_the_reply(
    bare_upstream: FakeUpstream, ending: str, with_usage: bool, tail: bytes
) -> None:
    items = [*TEXT, FINISH, *([USAGE] if with_usage else []), *([tail] if tail else [])]
    bare_upstream.push_script(raw=items, mid=ending)
    result = await collect(chat_body(model=MODEL), config_with_short_idle(bare_upstream))
    assert result.error is None
    assert result.text(TextDelta) == "A whole answer."
    usage = [Usage(prompt_tokens=11, completion_tokens=2)] if with_usage else []
    assert result.of(Usage) == usage
    assert result.events[-1] == Finish("stop")
    assert len(bare_upstream.chat_log()) == 1


@pytest.mark.parametrize("with_usage", USAGES)
@pytest.mark.parametrize("ending", ["cut", "drop", "reset", "torn"])
async def test_an_event_left_without_its_blank_line_at_the_end_still_counts(
    bare_upstream: FakeUpstream, config: UpstreamConfig, ending: str, with_usage: bool
) -> None:
    # The last event is whole up to its line end; only the blank line that ends it is missing.
    last = [FINISH, USAGE[:-1]] if with_usage else [FINISH[:-1]]
    bare_upstream.push_script(raw=[*TEXT, *last], mid=ending)
    result = await collect(chat_body(model=MODEL), config)
    assert result.error is None
    assert result.text(TextDelta) == "A whole answer."
    usage = [Usage(prompt_tokens=11, completion_tokens=2)] if with_usage else []
    assert result.events[-1 - len(usage) :] == [*usage, Finish("stop")]


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("ending", ENDINGS)
async def test_before_a_finish_reason_every_ending_is_an_error_keeping_the_text(
    bare_upstream: FakeUpstream, ending: str, tail: bytes
) -> None:
    bare_upstream.push_script(raw=[*TEXT, *([tail] if tail else [])], mid=ending)
    result = await collect(chat_body(model=MODEL), config_with_short_idle(bare_upstream))
    assert result.error is not None
    expected_code = "timeout" if ending == "stall" else "upstream_error"
    assert (result.error.code, result.error.after_tokens) == (expected_code, True)
    if ending != "stall":
        assert result.error.message == "The reply was cut off before it finished."
    assert result.text(TextDelta) == "A whole answer."
    assert not result.of(Finish)
    # Never retried once tokens were out.
    assert len(bare_upstream.chat_log()) == 1


async def test_a_reply_cut_after_its_finish_reason_is_logged_as_such(
    bare_upstream: FakeUpstream, config: UpstreamConfig, caplog: pytest.LogCaptureFixture
) -> None:
    bare_upstream.push_script(raw=[*TEXT, FINISH], mid="drop")
    assert (await collect(chat_body(model=MODEL), config)).error is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "chat.upstream"]
    assert any("after its finish_reason" in text and "upstream_error" in text for text in warnings)


@pytest.mark.parametrize("ending", ["drop", "reset", "torn", "stall"])
async def test_text_held_back_is_released_when_the_body_breaks_off(
    bare_upstream: FakeUpstream, ending: str
) -> None:
    # A reasoning model's text waits for a </think> that may come; half a surrogate pair
    # waits for its other half. When the connection breaks, both still reach the user.
    bare_upstream.push_script(
        raw=[sse_event(delta_chunk({"content": "A plain answer \ud83d"}))], mid=ending
    )
    result = await collect(chat_body(model=REASONING_MODEL), config_with_short_idle(bare_upstream))
    assert result.error is not None and result.error.after_tokens
    assert result.text(TextDelta) == "A plain answer \ufffd"
