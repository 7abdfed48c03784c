"""Frames the server writes directly must read exactly as the encoder would write them."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from chat import protocol

ids = st.integers(min_value=0, max_value=2**63 - 1)


@given(ids, ids, ids, st.text(), st.text())
def test_a_delta_frame_is_what_the_encoder_writes_for_its_fields(
    conversation: int, message: int, seq: int, content: str, reasoning: str
) -> None:
    fields: dict[str, object] = {
        "type": "delta",
        "conversation": conversation,
        "message": message,
        "seq": seq,
    }
    if content:
        fields["content"] = content
    if reasoning:
        fields["reasoning"] = reasoning
    text = protocol.delta_frame(conversation, message, seq, content, reasoning)
    assert text == protocol.encode(fields)
    assert json.loads(text) == fields


def test_a_delta_frame_keeps_quotes_controls_and_non_ascii_text_exact() -> None:
    content = 'say "hi"\\n\n\t\x00\u2028 caf\u00e9 \U0001f600'
    text = protocol.delta_frame(1, 2, 3, content, "")
    assert json.loads(text)["content"] == content
    assert "caf\u00e9" in text  # not escaped, as the encoder (ensure_ascii=False) writes it
