"""The websocket protocol of `/ws/chat/`: the one definition of every frame.

Client frames are parsed and validated here into typed objects; server frames are built here.
`docs/protocol.md` documents the same frames for people. Kept in one module, past 500 lines,
so that the protocol has one definition to read and to keep in step with that document.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings

from .errors import CONTENT_TOO_LONG, INVALID_FRAME, Refused

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_SYSTEM_PROMPT_CHARS = 20_000
MAX_MODEL_ID_CHARS = 200


@dataclass(frozen=True)
class Params:
    """Per-conversation generation parameters; None means "the model's default"."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    system_prompt: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Send:
    request_id: str
    conversation: int | None
    model: str | None
    content: str
    params: Params = field(default_factory=Params)
    images: tuple[int, ...] = ()
    preset: int | None = None


@dataclass(frozen=True)
class Regenerate:
    request_id: str
    message: int
    model: str | None


@dataclass(frozen=True)
class Edit:
    request_id: str
    message: int
    content: str
    model: str | None


@dataclass(frozen=True)
class Stop:
    message: int


@dataclass(frozen=True)
class Watch:
    conversation: int


@dataclass(frozen=True)
class Unwatch:
    conversation: int


@dataclass(frozen=True)
class Resync:
    """The client lost a frame: send exact snapshots of the conversation's replies in flight."""

    conversation: int


@dataclass(frozen=True)
class Retitle:
    """The user asks for a new title of a conversation (written from its first exchange)."""

    conversation: int


@dataclass(frozen=True)
class Ack:
    """Flow control: the client has received this many characters of frames in all."""

    received: int


ClientFrame = Send | Regenerate | Edit | Stop | Watch | Unwatch | Resync | Retitle | Ack


def _invalid(message: str, request_id: str | None = None) -> Refused:
    return Refused(INVALID_FRAME, message, request_id)


def _id(data: dict[str, Any], key: str, request_id: str | None = None) -> int:
    value = data.get(key)
    # bool is an int in Python; a JSON `true` is not an id.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise _invalid(f"'{key}' must be a positive integer id.", request_id)
    return value


def _request_id(data: dict[str, Any]) -> str:
    value = data.get("request_id")
    if not isinstance(value, str) or not REQUEST_ID_RE.match(value):
        raise _invalid("'request_id' must be 1 to 64 letters, digits, '-' or '_'.")
    return value


def _model(data: dict[str, Any], request_id: str) -> str | None:
    value = data.get("model")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_MODEL_ID_CHARS:
        raise _invalid("'model' must be a model id.", request_id)
    return value


# Text that JSON can carry but Python cannot encode: a "\ud83d" escape without the other half of
# its pair decodes to a lone surrogate, and saving or sending such a string raises
# UnicodeEncodeError. (A pair written as two escapes decodes to one character and is fine.)
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def lone_surrogate_at(value: object) -> tuple[str | int, ...] | None:
    """Where a decoded JSON value holds a string (or an object key) with a lone surrogate: the
    keys and indexes that lead to it, () for the value itself; None when there is none."""
    # Iterative, so that nesting as deep as the JSON parser allows cannot overflow the stack.
    stack: list[tuple[object, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return path
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if isinstance(key, str) and has_lone_surrogate(key):
                    return (*path, key)
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend(
                (child, (*path, index)) for index, child in reversed(list(enumerate(item)))
            )
    return None


def shown(text: str) -> str:
    """Text from a client, safe to put in a message: lone surrogates written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_path(path: tuple[str | int, ...]) -> str:
    """`params.system_prompt`, `images[2]`: a place in a JSON value, for messages."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{shown(part)}"
    return text


def lone_surrogate_message(where: str) -> str:
    return (
        f"{where} contains half of a surrogate pair (an escape such as \\ud83d without its "
        "other half), which is not text. Send valid Unicode."
    )


PARAM_KEYS = ("temperature", "top_p", "max_tokens", "system_prompt")


def _number(
    raw: dict[str, Any], key: str, low: float, high: float, request_id: str
) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    # JSON's NaN and Infinity parse to floats that no range check would refuse on its own.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise _invalid(f"'params.{key}' must be a number from {low} to {high}.", request_id)
    return float(value)


def parse_params(raw: Any, request_id: str = "") -> Params:
    """Validate generation parameters: the one check for every way they enter the database
    (a send frame, the conversation and preset API, an import). Refuses with the field named."""
    if raw is None:
        return Params()
    if not isinstance(raw, dict):
        raise _invalid("'params' must be an object.", request_id or None)
    unknown = [key for key in raw if key not in PARAM_KEYS]
    if unknown:
        name = shown(str(unknown[0]))[:40]
        raise _invalid(f"Unknown parameter 'params.{name}'.", request_id or None)
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 0 < max_tokens < 2**31
    ):
        raise _invalid(
            "'params.max_tokens' must be a whole number from 1 to 2147483647.", request_id or None
        )
    system_prompt = raw.get("system_prompt")
    if system_prompt is not None:
        if not isinstance(system_prompt, str):
            raise _invalid("'params.system_prompt' must be text.", request_id or None)
        if has_lone_surrogate(system_prompt):
            raise _invalid(lone_surrogate_message("'params.system_prompt'"), request_id or None)
        if len(system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
            raise Refused(
                CONTENT_TOO_LONG,
                f"The system prompt is longer than {MAX_SYSTEM_PROMPT_CHARS} characters.",
                request_id or None,
            )
    return Params(
        temperature=_number(raw, "temperature", 0, 2, request_id),
        top_p=_number(raw, "top_p", 0, 1, request_id),
        max_tokens=max_tokens,
        system_prompt=system_prompt,
    )


def stored_params(raw: object) -> Params:
    """Parameters saved by an older version, which may not have checked them: each valid key
    kept, each invalid one dropped. Never raises."""
    if not isinstance(raw, dict):
        return Params()
    kept: dict[str, Any] = {}
    for key in PARAM_KEYS:
        if key in raw:
            try:
                parse_params({key: raw[key]})
            except Refused:
                continue
            kept[key] = raw[key]
    return parse_params(kept)


def _content(data: dict[str, Any], request_id: str) -> str:
    content = data.get("content")
    if not isinstance(content, str) or not content.strip():
        raise _invalid("'content' must be non-empty text.", request_id)
    limit = settings.MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise Refused(
            CONTENT_TOO_LONG,
            f"The message is {len(content):,} characters long; the limit is {limit:,}.",
            request_id,
        )
    return content


def _images(data: dict[str, Any], request_id: str) -> tuple[int, ...]:
    images = data.get("images")
    if images is None:
        return ()
    if not isinstance(images, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in images
    ):
        raise _invalid("'images' must be a list of uploaded image ids.", request_id)
    limit = settings.MAX_IMAGES_PER_MESSAGE
    if len(images) > limit:
        raise Refused(CONTENT_TOO_LONG, f"A message can carry at most {limit} images.", request_id)
    return tuple(dict.fromkeys(images))


def parse_client_frame(text: str | None) -> ClientFrame:
    """Parse one text frame. Raises Refused with a code and a message for the user."""
    if text is None:
        raise _invalid("Send JSON text frames.")
    if len(text) > settings.MAX_FRAME_CHARS:
        raise Refused(
            CONTENT_TOO_LONG, f"Frames are limited to {settings.MAX_FRAME_CHARS:,} characters."
        )
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise _invalid("The frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise _invalid("The frame must be a JSON object.")
    bad = lone_surrogate_at(data)
    if bad is not None:
        request_id = data.get("request_id")
        valid_id = isinstance(request_id, str) and REQUEST_ID_RE.match(request_id)
        raise _invalid(
            lone_surrogate_message(f"'{json_path(bad)}'"), request_id if valid_id else None
        )
    kind = data.get("type")
    if kind == "send":
        request_id = _request_id(data)
        conversation = None if data.get("conversation") is None else _id(data, "conversation")
        return Send(
            request_id=request_id,
            conversation=conversation,
            model=_model(data, request_id),
            content=_content(data, request_id),
            params=parse_params(data.get("params"), request_id),
            images=_images(data, request_id),
            preset=None if data.get("preset") is None else _id(data, "preset", request_id),
        )
    if kind == "regenerate":
        request_id = _request_id(data)
        return Regenerate(
            request_id=request_id,
            message=_id(data, "message", request_id),
            model=_model(data, request_id),
        )
    if kind == "edit":
        request_id = _request_id(data)
        return Edit(
            request_id=request_id,
            message=_id(data, "message", request_id),
            content=_content(data, request_id),
            model=_model(data, request_id),
        )
    if kind == "stop":
        return Stop(message=_id(data, "message"))
    if kind == "watch":
        return Watch(conversation=_id(data, "conversation"))
    if kind == "unwatch":
        return Unwatch(conversation=_id(data, "conversation"))
    if kind == "resync":
        return Resync(conversation=_id(data, "conversation"))
    if kind == "retitle":
        return Retitle(conversation=_id(data, "conversation"))
    if kind == "ack":
        received = data.get("received")
        if isinstance(received, bool) or not isinstance(received, int) or received < 0:
            raise _invalid("'received' must be a non-negative integer.")
        return Ack(received=received)
    if isinstance(kind, str):
        raise _invalid(f"Unknown frame type '{kind[:40]}'.")
    raise _invalid("The frame needs a 'type'.")


# Server frames. Encoded once and fanned out as text to every watching socket.


# One encoder for every frame: json.dumps() with options builds a new encoder on each call, and
# a frame is encoded once per token.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# The function that encoder uses for strings (ensure_ascii=False).
_json_string = json.encoder.encode_basestring


def encode(frame: dict[str, Any]) -> str:
    return _ENCODER.encode(frame)


def error_frame(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame


def accepted_frame(
    request_id: str, conversation: int, user_message: int | None, message: int
) -> dict[str, Any]:
    return {
        "type": "accepted",
        "request_id": request_id,
        "conversation": conversation,
        "user_message": user_message,
        "message": message,
    }


def started_frame(
    conversation: int, message: int, user_message: dict[str, Any] | None, model: str
) -> dict[str, Any]:
    return {
        "type": "started",
        "conversation": conversation,
        "message": message,
        "user_message": user_message,
        "model": model,
    }


def snapshot_frame(
    conversation: int, message: int, seq: int, content: str, reasoning: str, status: str
) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "conversation": conversation,
        "message": message,
        "seq": seq,
        "content": content,
        "reasoning": reasoning,
        "status": status,
    }


# A snapshot's text goes out in frames of at most this many characters: a websocket message has
# a size limit (daphne's is 1 MiB), and JSON writes a control character in six bytes.
SNAPSHOT_PIECE_CHARS = 100_000


def snapshot_frames(
    conversation: int,
    message: int,
    seq: int,
    content: str,
    reasoning: str,
    status: str,
    piece: int = SNAPSHOT_PIECE_CHARS,
) -> list[dict[str, Any]]:
    """A snapshot as frames of at most `piece` characters of text: a `snapshot` with the first
    piece and, when there is more, `"more": true`, then `snapshot_part` frames adding to its
    content and reasoning, the last with `"more": false`. The client applies the snapshot
    once it is whole."""
    if len(content) + len(reasoning) <= piece:
        return [snapshot_frame(conversation, message, seq, content, reasoning, status)]
    parts: list[tuple[str, str]] = []
    for field_name, text in (("content", content), ("reasoning", reasoning)):
        for start in range(0, len(text), piece):
            parts.append((field_name, text[start : start + piece]))
    frames: list[dict[str, Any]] = []
    for index, (field_name, text) in enumerate(parts):
        if index == 0:
            frame = snapshot_frame(conversation, message, seq, "", "", status)
        else:
            frame = {
                "type": "snapshot_part",
                "conversation": conversation,
                "message": message,
                "seq": seq,
                "content": "",
                "reasoning": "",
            }
        frame[field_name] = text
        frame["more"] = index < len(parts) - 1
        frames.append(frame)
    return frames


def delta_frame(conversation: int, message: int, seq: int, content: str, reasoning: str) -> str:
    """A delta frame, encoded: what `encode` makes of `{"type": "delta", "conversation": ...,
    "message": ..., "seq": ..., "content": ..., "reasoning": ...}` (content and reasoning only
    when not empty), written directly. A reply sends one for every token; building the dict
    and walking it with the encoder took several times as long."""
    text = f'{{"type":"delta","conversation":{conversation:d},"message":{message:d},"seq":{seq:d}'
    if content:
        text += ',"content":' + _json_string(content)
    if reasoning:
        text += ',"reasoning":' + _json_string(reasoning)
    return text + "}"


def done_frame(
    conversation: int,
    message: int,
    status: str,
    *,
    seq: int,
    prompt_tokens: int,
    completion_tokens: int,
    estimated: bool,
    cost: Decimal | None,
    error: dict[str, str] | None = None,
    reasoning_ms: int | None = None,
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "done",
        "conversation": conversation,
        "message": message,
        "seq": seq,
        "status": status,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "estimated": estimated,
        },
        "cost": None if cost is None else format(cost, "f"),
        "reasoning_ms": reasoning_ms,
    }
    if error:
        frame["error"] = error
    return frame


def title_frame(conversation: int, title: str) -> dict[str, Any]:
    return {"type": "title", "conversation": conversation, "title": title}


def watching_frame(conversation: int, streaming: list[int]) -> dict[str, Any]:
    return {"type": "watching", "conversation": conversation, "streaming": streaming}
