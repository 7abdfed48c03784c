"""Separates a model's reasoning from its answer, whatever form the model uses.

Chutes models deliver reasoning in one of these forms:

1. `delta.reasoning_content` (or `delta.reasoning`), answer in `delta.content`;
2. inline `<think>...</think>` at the start of `delta.content`;
3. only a closing `</think>`, because the chat template put the opening tag in the prompt:
   everything the model writes before `</think>` is reasoning.

Forms 1 and 2 are recognised as they arrive. Form 3 cannot be told from a plain answer until a
`</think>` shows up, so the splitter only waits for it when told the model reasons
(`hold_for_close=True`): the text before `</think>` is then held back and released as reasoning
when the tag arrives, or as the answer if the reply ends without one (a reasoning model asked not
to think must not lose its answer). Without that flag, text that does not open with `<think>` is
the answer and streams at once. A lone `</think>` right at the start of the content (only
whitespace before it) is dropped in every mode.

Otherwise text is released as soon as it is unambiguous: only a possible partial tag (`<th`) and
the newlines that would be trimmed at the reasoning/answer boundary are held back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
NEWLINES = "\r\n"

Kind = Literal["reasoning", "answer"]

# Model families whose templates may open <think> in the prompt. Qwen3's hybrid thinking always
# writes its own <think>, so it never needs the wait for a lone closing tag.
_CLOSE_ONLY_FAMILIES = re.compile(r"(?i)(\br1\b|r1t\d|\bqwq\b|thinking)")


@dataclass(frozen=True, slots=True)
class Piece:
    kind: Kind
    text: str


def infer_reasoning_model(body: Mapping[str, Any]) -> bool:
    """Best guess whether a request's model may emit a lone `</think>`, from the model id.

    Callers that know better (the catalogue's `reasoning` feature) should pass that instead.
    """
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, Mapping) and any(
        kwargs.get(key) is False for key in ("thinking", "enable_thinking")
    ):
        return False
    model = body.get("model")
    return isinstance(model, str) and _CLOSE_ONLY_FAMILIES.search(model) is not None


def delta_texts(delta: Mapping[str, Any]) -> tuple[str, str]:
    """The reasoning and the content a stream delta carries; "" where it carries no text."""
    reasoning = delta.get("reasoning_content")
    # Some servers send both names with the same text: take one, never both.
    if not (isinstance(reasoning, str) and reasoning):
        reasoning = delta.get("reasoning")
    content = delta.get("content")
    return (
        reasoning if isinstance(reasoning, str) else "",
        content if isinstance(content, str) else "",
    )


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ReasoningSplitter:
    """Feed deltas with `feed_delta()` (or the two `feed_*` methods), then call `finish()`."""

    def __init__(self, *, split_think: bool = True, hold_for_close: bool = False) -> None:
        self.split_think = split_think
        self.hold_for_close = hold_for_close
        self._state: Literal["lead", "think", "hold", "answer"] = "lead"
        self._pending = ""
        self._scan_from = 0
        self._field_reasoning = False
        self._reasoning_lead = True
        self._answer_lead = True
        self._out: list[Piece] = []

    def feed_delta(self, delta: Mapping[str, Any]) -> list[Piece]:
        reasoning, content = delta_texts(delta)
        if reasoning:
            self._reasoning(reasoning)
        if content:
            self._content(content)
        return self._take()

    def feed_reasoning(self, text: str) -> list[Piece]:
        self._reasoning(text)
        return self._take()

    def feed_content(self, text: str) -> list[Piece]:
        self._content(text)
        return self._take()

    def finish(self) -> list[Piece]:
        pending, self._pending = self._pending, ""
        if self._state == "think":
            self._emit_reasoning(pending.rstrip(NEWLINES))
        elif pending.strip():
            self._emit_answer(pending)
        self._state = "answer"
        return self._take()

    def _take(self) -> list[Piece]:
        out, self._out = self._out, []
        return out

    def _emit(self, kind: Kind, text: str) -> None:
        if not text:
            return
        if self._out and self._out[-1].kind == kind:
            self._out[-1] = Piece(kind, self._out[-1].text + text)
        else:
            self._out.append(Piece(kind, text))

    def _emit_reasoning(self, text: str) -> None:
        if self._reasoning_lead:
            text = text.lstrip(NEWLINES)
            self._reasoning_lead = not text
        self._emit("reasoning", text)

    def _emit_answer(self, text: str) -> None:
        if self.split_think and self._answer_lead:
            text = text.lstrip(NEWLINES)
            self._answer_lead = not text
        self._emit("answer", text)

    def _reasoning(self, text: str) -> None:
        self._field_reasoning = True
        if self._state == "hold":
            # The server parses reasoning itself, so held content was an answer after all.
            held, self._pending = self._pending, ""
            self._state = "answer"
            self._emit_answer(held)
        self._emit_reasoning(text)

    def _content(self, text: str) -> None:
        if not self.split_think:
            self._emit("answer", text)
            return
        if self._state == "lead":
            self._lead(text)
        elif self._state == "think":
            self._think(text)
        elif self._state == "hold":
            self._hold(text)
        else:
            self._emit_answer(text)

    def _lead(self, text: str) -> None:
        text = self._pending + text
        self._pending = ""
        start = text.lstrip()
        if not start:
            self._pending = text
        elif start.startswith(OPEN_TAG):
            self._state = "think"
            self._think(start[len(OPEN_TAG) :])
        elif start.startswith(CLOSE_TAG):
            self._state = "answer"
            self._emit_answer(start[len(CLOSE_TAG) :])
        elif OPEN_TAG.startswith(start) or CLOSE_TAG.startswith(start):
            self._pending = text
        elif self.hold_for_close and not self._field_reasoning:
            self._state = "hold"
            self._hold(text)
        else:
            self._state = "answer"
            self._emit_answer(text)

    def _think(self, text: str) -> None:
        text = self._pending + text
        self._pending = ""
        end = text.find(CLOSE_TAG)
        if end >= 0:
            self._emit_reasoning(text[:end].rstrip(NEWLINES))
            self._state = "answer"
            self._emit_answer(text[end + len(CLOSE_TAG) :])
            return
        keep = _partial_suffix(text, CLOSE_TAG)
        body = text[: len(text) - keep]
        visible = body.rstrip(NEWLINES)
        # Newlines just before </think> are trimmed, so they wait until more text follows.
        self._pending = text[len(visible) :]
        self._emit_reasoning(visible)

    def _hold(self, text: str) -> None:
        self._pending += text
        end = self._pending.find(CLOSE_TAG, self._scan_from)
        if end < 0:
            self._scan_from = max(0, len(self._pending) - len(CLOSE_TAG) + 1)
            return
        held, self._pending = self._pending, ""
        self._emit_reasoning(held[:end].strip(NEWLINES))
        self._state = "answer"
        self._emit_answer(held[end + len(CLOSE_TAG) :])
