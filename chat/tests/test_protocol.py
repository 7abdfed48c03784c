"""Frames the server writes directly must read exactly as the encoder would write them."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from chat import errors, protocol

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


# Generation parameters --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
stored = json_values | st.dictionaries(
    st.sampled_from([*protocol.PARAM_KEYS, "stop"]), json_values, max_size=5
)


@given(stored)
def test_stored_params_keep_each_valid_key_and_drop_each_invalid_one(raw: object) -> None:
    params = protocol.stored_params(raw)
    # What is kept is exactly what the one check accepts, key by key.
    expected: dict[str, object] = {}
    if isinstance(raw, dict):
        for key in protocol.PARAM_KEYS:
            try:
                value = getattr(protocol.parse_params({key: raw.get(key)}), key)
            except errors.Refused:
                continue
            if value is not None:
                expected[key] = value
    assert params.as_json() == expected
    assert protocol.parse_params(params.as_json()) == params


def test_stored_params_read_what_older_versions_saved_unchecked() -> None:
    raw = {"max_tokens": -1_000_000_000, "temperature": "0.5", "top_p": 0.9, "seed": 3}
    assert protocol.stored_params(raw) == protocol.Params(top_p=0.9)
    assert protocol.stored_params({"max_tokens": 300, "system_prompt": "\ud83d"}) == (
        protocol.Params(max_tokens=300)
    )
    assert protocol.stored_params(["max_tokens", 5]) == protocol.Params()


@given(st.sampled_from(["NaN", "Infinity", "-Infinity", "true", "1e999"]))
def test_params_refuse_nan_infinity_and_bools_naming_the_field(literal: str) -> None:
    for key in ("temperature", "top_p", "max_tokens"):
        text = json.dumps({"type": "send", "request_id": "r", "content": "hi"})
        text = text[:-1] + f', "params": {{"{key}": {literal}}}}}'
        try:
            protocol.parse_client_frame(text)
        except errors.Refused as exc:
            assert exc.code == errors.INVALID_FRAME
            assert f"'params.{key}'" in exc.message
        else:
            raise AssertionError(f"{key}: {literal} was accepted")
