"""What the stand-in does for one request: the script, and the reply it plans from it.

A script comes from `FakeUpstream.push_script()`, else from a `[[fake {json}]]` directive in the
last user message (so a person or a browser test can trigger a behaviour by typing it), else from
the default script. Fields given by a pushed script or a directive override the default's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REASONING_MODES = ("reasoning_content", "reasoning", "think", "close_only")
# error_line: Chutes' bare {"error": ...} line, then the end of the body without [DONE];
# cut: the body ends cleanly without [DONE]; drop: the connection closes mid-body;
# torn: the connection closes partway through an HTTP chunk, after a partial `data:` line;
# stall: nothing more is sent, the connection stays open; reset: TCP RST;
# no_done: the reply completes (finish_reason, usage) but [DONE] never comes.
MID_FAULTS = ("error_line", "cut", "drop", "torn", "stall", "reset", "no_done")
ERROR_STATUSES = (400, 401, 402, 403, 404, 413, 422, 429, 500, 502, 503)
DEFAULT_TOKENS = 12
AUTO = "auto"

# Non-ASCII on purpose: multi-byte UTF-8 must survive any chunking on the way.
FILLER = (
    "café", "naïve", "résumé", "—", "über", "jalapeño", "🙂", "façade", "smörgåsbord",
    "日本語", "crème", "brûlée", "piñata", "Zoë", "✨", "déjà", "vu", "coöperate",
)  # fmt: skip

_DIRECTIVE = re.compile(r"\[\[fake\s+(\{.*\})\s*\]\]", re.DOTALL)
_WORD = re.compile(r"\s*\S+|\s+")


class ScriptError(ValueError):
    """A script that cannot be followed; served as HTTP 400 when it came from a directive."""


@dataclass(frozen=True)
class Script:
    """One request's behaviour. All fields are optional.

    text, tokens      the answer, and in how many chunks; by default "Echo: <first 40 characters
                      of the last user message>. " and non-ASCII filler, 12 chunks
    interval_ms, tps  time between chunks; ttft_ms: time to the first chunk (and the headers)
    reasoning         reasoning text ("auto": a generated one for models with the reasoning
                      feature), written as reasoning_mode: reasoning_content, reasoning, think
                      (inline tags) or close_only (a lone </think>)
    usage             True, False (no usage chunk) or numbers overriding prompt_tokens,
                      completion_tokens, cached_tokens
    status, detail    fail before the first chunk with this HTTP status (and `detail` body);
                      fail_times: fail only the first N attempts (503 unless status is given)
    retry_after       a Retry-After header on those failures
    mid, after        a fault after `after` chunks: see MID_FAULTS
    crlf, ping_every, chunk_bytes
                      CRLF line ends, a `: ping` comment every N chunks, writes of N bytes
    stamp             chunks are "⟦index:monotonic_ns⟧ " stamped when written, for benchmarks
    finish_reason     the finish_reason of the last chunk
    raw               the streamed body's exact bytes instead of a planned reply: a list of items
                      (bytes as they are, text in UTF-8), each written as its own HTTP chunk,
                      `interval_ms` apart, and nothing else (no usage, no [DONE] unless an item
                      has them); `mid` happens after `after` items (after all of them by
                      default). A request that does not stream gets the items as one body.
                      `sse_event()` and `delta_chunk()` build items.
    """

    text: str | None = None
    tokens: int | None = None
    interval_ms: float = 0.0
    tps: float | None = None
    ttft_ms: float = 0.0
    reasoning: str | None = None
    reasoning_mode: str = "reasoning_content"
    usage: bool | dict[str, int] = True
    status: int | None = None
    fail_times: int | None = None
    detail: Any = None
    retry_after: float | None = None
    after: int | None = None
    mid: str | None = None
    crlf: bool = False
    ping_every: int = 0
    chunk_bytes: int = 0
    stamp: bool = False
    finish_reason: str = "stop"
    raw: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        for name, kinds in _FIELD_TYPES.items():
            value = getattr(self, name)
            # bool is an int to Python, but `"tokens": true` is a typo, not a number.
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ScriptError(f"{name} has the wrong type: {value!r}")
        if self.reasoning_mode not in REASONING_MODES:
            raise ScriptError(f"reasoning_mode must be one of {', '.join(REASONING_MODES)}")
        if self.mid is not None and self.mid not in MID_FAULTS:
            raise ScriptError(f"mid must be one of {', '.join(MID_FAULTS)}")
        if self.status is not None and self.status not in ERROR_STATUSES:
            raise ScriptError(f"status must be one of {ERROR_STATUSES}")
        if self.tokens is not None and self.tokens < 0:
            raise ScriptError("tokens must not be negative")
        if self.tps is not None and self.tps <= 0:
            raise ScriptError("tps must be positive")
        for name in ("interval_ms", "ttft_ms", "ping_every", "chunk_bytes"):
            if getattr(self, name) < 0:
                raise ScriptError(f"{name} must not be negative")
        if self.raw is not None:
            # Frozen: the normalised items replace the given ones once, here.
            object.__setattr__(self, "raw", tuple(_raw_item(item) for item in self.raw))

    @property
    def interval(self) -> float:
        """Seconds between two tokens."""
        return 1.0 / self.tps if self.tps else self.interval_ms / 1000

    @property
    def error_status(self) -> int | None:
        """The status to fail with, before any fail_times bookkeeping."""
        if self.status is not None:
            return self.status
        return 503 if self.fail_times else None

    def fault_at(self, total: int) -> int | None:
        """Token (or raw item) index before which the mid-stream fault happens, if any."""
        if self.mid is None or self.mid == "no_done":
            return None
        if self.after is None and self.raw is not None:
            return total
        return min(self.after or 0, total)


def _raw_item(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, str):
        try:
            return item.encode()
        except UnicodeEncodeError:
            raise ScriptError(
                "raw text must be UTF-8 encodable: write lone surrogates as JSON escapes "
                "(sse_event() does) or give bytes"
            ) from None
    raise ScriptError(f"raw items must be bytes or text: {item!r}")


_NUMBER = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str, type(None)),
    "tokens": (int, type(None)),
    "interval_ms": _NUMBER,
    "tps": (*_NUMBER, type(None)),
    "ttft_ms": _NUMBER,
    "reasoning": (str, type(None)),
    "reasoning_mode": (str,),
    "usage": (bool, dict),
    "status": (int, type(None)),
    "fail_times": (int, type(None)),
    "retry_after": (*_NUMBER, type(None)),
    "after": (int, type(None)),
    "mid": (str, type(None)),
    "crlf": (bool,),
    "ping_every": (int,),
    "chunk_bytes": (int,),
    "stamp": (bool,),
    "finish_reason": (str,),
    "raw": (list, tuple, type(None)),
}


def make_script(base: Script | None = None, **fields: Any) -> Script:
    base = base or Script()
    known = {f.name for f in dataclasses.fields(Script)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ScriptError(f"unknown script field(s): {', '.join(unknown)}")
    try:
        return dataclasses.replace(base, **fields)
    except TypeError as exc:
        raise ScriptError(str(exc)) from None


def message_text(message: Any) -> str:
    """The text of a chat message, whether its content is a string or a list of parts."""
    if not isinstance(message, Mapping):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        ]
        return " ".join(parts)
    return ""


def last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return message_text(message)
    return ""


def directive(messages: Sequence[Any]) -> dict[str, Any] | None:
    """The `[[fake {...}]]` fields of the last user message, if it has any."""
    match = _DIRECTIVE.search(last_user_text(messages))
    if match is None:
        return None
    try:
        fields = json.loads(match.group(1))
    except ValueError as exc:
        raise ScriptError(f"fake directive is not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ScriptError("fake directive must be a JSON object")
    return fields


def count_prompt_tokens(messages: Sequence[Any]) -> int:
    """A deterministic stand-in for a tokenizer: 4 per message plus one per 4 characters."""
    total = 0
    for message in messages:
        total += 4 + math.ceil(len(message_text(message)) / 4)
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            total += 85 * sum(
                1
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "image_url"
            )
    return total


def _snippet(messages: Sequence[Any]) -> str:
    text = _DIRECTIVE.sub("", last_user_text(messages))
    return " ".join(text.split())[:40]


def default_text(messages: Sequence[Any], words: int = DEFAULT_TOKENS) -> str:
    filler = " ".join(FILLER[i % len(FILLER)] for i in range(words))
    return f"Echo: {_snippet(messages)}. {filler}"


def default_reasoning(messages: Sequence[Any]) -> str:
    return f"The user wrote “{_snippet(messages)}”. A short, friendly answer will do — ✓ done."


def split_pieces(text: str, count: int | None) -> list[str]:
    """`text` in `count` pieces (one per word when None), each word with its leading space."""
    words = _WORD.findall(text)
    if count is None:
        return words
    if count == 0 or not text:
        return []
    items: Sequence[str] = words if len(words) >= count else list(text)
    count = min(count, len(items))
    bounds = [round(i * len(items) / count) for i in range(count + 1)]
    return ["".join(items[bounds[i] : bounds[i + 1]]) for i in range(count)]


@dataclass(frozen=True)
class Token:
    kind: str  # "reasoning" or "answer"
    text: str


@dataclass(frozen=True)
class Plan:
    """The reply a script produces: its tokens in order, and the texts a client should see."""

    tokens: tuple[Token, ...]
    text: str
    reasoning: str


def plan_reply(script: Script, messages: Sequence[Any], *, reasoning_model: bool = False) -> Plan:
    if script.text is not None:
        text = script.text
        pieces = split_pieces(text, script.tokens)
    else:
        count = DEFAULT_TOKENS if script.tokens is None else script.tokens
        text = default_text(messages, count) if count else ""
        pieces = split_pieces(text, count)
    if script.stamp:
        # The text is made of emit times, written as each token goes out.
        count = DEFAULT_TOKENS if script.tokens is None else script.tokens
        pieces = [""] * count
        text = ""
    reasoning = script.reasoning
    if reasoning == AUTO:
        reasoning = default_reasoning(messages) if reasoning_model else None
    thoughts = split_pieces(reasoning, None) if reasoning else []
    tokens = [Token("reasoning", piece) for piece in thoughts]
    tokens += [Token("answer", piece) for piece in pieces]
    return Plan(tokens=tuple(tokens), text=text, reasoning=reasoning or "")


def effective_script(
    script: Script | Mapping[str, Any] | None,
    messages: Sequence[Any],
    *,
    default: Script | None = None,
) -> Script:
    """The script the stand-in follows: default <- message directive <- given fields."""
    base = make_script(default or Script(), **(directive(messages) or {}))
    if isinstance(script, Script):
        return script
    return make_script(base, **dict(script or {}))


def expected_text(
    script: Script | Mapping[str, Any] | None,
    messages: Sequence[Any],
    *,
    default: Script | None = None,
) -> str:
    """The answer text the stand-in streams for these messages (reasoning excluded)."""
    resolved = effective_script(script, messages, default=default)
    if resolved.stamp:
        raise ValueError("a stamped reply is made of emit times and cannot be predicted")
    if resolved.raw is not None:
        raise ValueError("a raw reply's text is whatever its bytes say")
    return plan_reply(resolved, messages).text


# Building raw replies.

DONE_EVENT = b"data: [DONE]\n\n"


def sse_event(payload: Any, *, eol: str = "\n") -> bytes:
    """One `data:` event carrying `payload` as JSON. Everything beyond ASCII is written as
    `\\uXXXX` escapes, as many servers do, so text with lone surrogates (half of an emoji)
    goes out the way such a server would write it."""
    return f"data: {json.dumps(payload)}{eol}{eol}".encode()


def delta_chunk(
    delta: Mapping[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    usage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A `chat.completion.chunk` with one choice (or none, for a usage-only chunk)."""
    chunk: dict[str, Any] = {"id": "chatcmpl-raw", "object": "chat.completion.chunk"}
    if delta is None and usage is not None:
        chunk["choices"] = []
    else:
        choice = {"index": 0, "delta": dict(delta or {}), "finish_reason": finish_reason}
        chunk["choices"] = [choice]
    chunk["usage"] = dict(usage) if usage is not None else None
    return chunk


def usage_numbers(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
