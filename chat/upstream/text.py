"""Text from the upstream made storable: surrogate halves joined or replaced, NUL replaced."""

from __future__ import annotations

import re

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")


# What no UTF-8 encoder writes and no database stores: UTF-16 surrogates, which JSON escapes
# such as "\ud83d" decode to, and NUL, which PostgreSQL refuses in text.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with the two halves of each surrogate pair joined into their character, and lone
    halves and NUL replaced by U+FFFD: text that can be sent and stored."""
    if _UNSTORABLE.search(text) is None:
        return text
    text = text.replace("\x00", "\ufffd")
    # Through UTF-16 the halves of a pair become one character; its decoder replaces a lone one.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class _FieldText:
    """The text of one delta field as it streams in, made clean (`clean_text`).

    A server may cut its text between the two halves of a surrogate pair and send them as JSON
    escapes in two deltas. A first half at the end of a delta waits for the next delta of the
    same field (the other field's text is not its continuation); the end of the stream turns
    it into U+FFFD.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        if self._held:
            text = self._held + text
            self._held = ""
        elif _UNSTORABLE.search(text) is None:
            return text
        if text and "\ud800" <= text[-1] <= "\udbff":
            self._held = text[-1]
            text = text[:-1]
        return clean_text(text)

    def end(self) -> str:
        held, self._held = self._held, ""
        return "\ufffd" if held else ""
