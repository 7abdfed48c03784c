"""Money: costs in Decimal from token counts and per-million prices, and token estimates.

Token estimates. A reply that ends without the provider's usage (stopped, cut off, failed) is
billed from an estimate of its text, and every prompt is sized by one before it is sent. The
estimate is a weight per character, by class, added up (`text_weight`, so a stream can add the
weights of its pieces) and rounded up (`estimate_tokens`). Tokens per character:

    ASCII lowercase 0.26, uppercase 0.55, digit 1.06, space 0.05, line break or tab 0.50,
    punctuation 0.46; Latin with diacritics 0.92; Greek 0.77; Cyrillic 0.35; Arabic and
    Hebrew 0.47; Indic scripts 0.93; Thai, Lao, Khmer, Myanmar 0.49; common CJK ideographs and
    punctuation 0.62; kana 0.69; Hangul 0.91; typographic marks (dashes, curly quotes, ellipsis,
    guillemets, no-break space) 0.21; emoji and other symbols 1.25; everything else 1.16.

The weights are fitted by `python -m bench.tokens --fit` to the real counts of DeepSeek V3's
tokenizer and Qwen's (the vocabulary Qwen2.5 and Qwen3 keep) on 29 samples written for this
project (chat/tests/data/token_samples: prose in 20 languages and 15 scripts, code, JSON,
markdown, LaTeX, logs and identifiers, numbers, tables, emoji chat), minimising the sum over
samples and tokenizers of (e/r)^8 + (r/e)^8; spaces and line breaks are held, not fitted.
Digits cost 1.06 because Qwen makes a token of every digit (DeepSeek of three).

Measured (`python -m bench.tokens`; the tests hold it to chat/tests/data/token_counts.json): on
every sample, with both tokenizers, the estimate is within a factor MEASURED_ERROR = 1.35 of
the real count (worst 1.342 over, Greek with DeepSeek; 1.338 under, the same Greek with Qwen,
which counts 1.78 times more tokens in it than DeepSeek, so no one estimate does better). Weights
fitted without a sample are off on it by up to 2.0 (Vietnamese with Qwen). The rule this
replaced, four UTF-8 bytes a token, was off by 1.78 over (Thai) and 2.63 under (identifiers).
Gemma 3 and Mistral tokenizers are not measured.

Text built to defeat a per-character rule goes further (`bench.tokens` prints 14 such texts):
random rare ideographs count 3.45 times the estimate, single letters between spaces 3.2 times,
random characters of one script up to 2.9 times; long digit strings are estimated at 3.2 times
DeepSeek's count, and a run of one character (a line of "=") at up to 27 times. Both bounds
below therefore use 4, which covers every sample about three times over and every crafted text
measured, except such runs for MAX_OVERCOUNT.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

MILLION = Decimal(1_000_000)
# Costs are kept to twelve decimals (a single token at $0.01/1M is 1e-8 USD).
COST_QUANTUM = Decimal("0.000000000001")
# Every chat message costs a few tokens of template around its text (Qwen: 5, DeepSeek: 1 or 2).
MESSAGE_OVERHEAD_TOKENS = 4

# Estimate and real token counts of every sample are within this factor of each other.
MEASURED_ERROR = 1.35
# A bound on estimate / real for any reply: past max_tokens * MAX_OVERCOUNT (plus a little for
# short replies) a reply has certainly gone past its max_tokens, so a reply the model stops at
# max_tokens is never cut (long digit strings, the worst crafted case, reach 3.2).
MAX_OVERCOUNT = 4.0
# upper_prompt_tokens: real / estimate reaches 1.34 on the samples and 3.45 on crafted text.
PROMPT_UNDERCOUNT_FACTOR = 4
# The fixed part of a chat template: Qwen2.5's default system prompt and turn markers come to 29
# tokens for a one-question prompt beyond its text and per-message overhead (DeepSeek V3: 3).
PROMPT_TEMPLATE_TOKENS = 64


@dataclass(frozen=True)
class CharClass:
    name: str
    # Tokens per character, in hundredths (an integer, so sums are exact).
    units: int
    # Inclusive code point ranges.
    ranges: tuple[tuple[int, int], ...]


UNITS_PER_TOKEN = 100
CHAR_CLASSES: tuple[CharClass, ...] = (
    # The first class is what every code point not listed below falls in.
    CharClass("other", 116, ()),
    CharClass("lower", 26, ((0x61, 0x7A),)),
    CharClass("upper", 55, ((0x41, 0x5A),)),
    CharClass("digit", 106, ((0x30, 0x39),)),
    CharClass("space", 5, ((0x20, 0x20),)),
    CharClass("newline", 50, ((0x09, 0x0D),)),
    CharClass(
        "punct",
        46,
        ((0x00, 0x08), (0x0E, 0x1F), (0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7F)),
    ),
    # Latin letters with diacritics, IPA, spacing and combining marks.
    CharClass("latin", 92, ((0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x36F), (0x1E00, 0x1EFF))),
    CharClass("greek", 77, ((0x370, 0x3FF), (0x1F00, 0x1FFF))),
    CharClass(
        "cyrillic", 35, ((0x400, 0x52F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F))
    ),
    CharClass("arabic_hebrew", 47, ((0x590, 0x8FF), (0xFB1D, 0xFDFF), (0xFE70, 0xFEFF))),
    # Devanagari, Bengali, Gurmukhi, Gujarati, Oriya, Tamil, Telugu, Kannada, Malayalam, Sinhala.
    CharClass("indic", 93, ((0x900, 0xDFF),)),
    # Thai, Lao, Myanmar, Khmer.
    CharClass("thai", 49, ((0xE00, 0xEFF), (0x1000, 0x109F), (0x1780, 0x17FF))),
    # The common ideographs, CJK punctuation and full-width forms. The rare blocks (extension
    # A, compatibility, enclosed forms, the supplementary planes) take two to four tokens a
    # character and stay in "other".
    CharClass(
        "cjk",
        62,
        ((0x3000, 0x303F), (0x3100, 0x312F), (0x4E00, 0x9FFF), (0xFF00, 0xFF64), (0xFFE0, 0xFFEF)),
    ),
    CharClass("kana", 69, ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF65, 0xFF9F))),
    CharClass(
        "hangul",
        91,
        ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF), (0xFFA0, 0xFFDC)),
    ),
    # Emoji, their joiner and variation selectors, and the symbols of Latin-1 and of the blocks
    # from general punctuation to miscellaneous symbols (arrows, maths, box drawing, dingbats).
    CharClass(
        "symbol",
        125,
        (
            (0xA0, 0xBF),
            (0xD7, 0xD7),
            (0xF7, 0xF7),
            (0x2000, 0x2BFF),
            (0xFE00, 0xFE0F),
            (0x1F000, 0x1FAFF),
        ),
    ),
    # The typographic marks of prose: no-break spaces, guillemets, inverted marks, dashes,
    # curly quotes, bullet and ellipsis. After "symbol": they are carved out of its ranges.
    CharClass(
        "typographic",
        21,
        (
            (0xA0, 0xA1),
            (0xAB, 0xAB),
            (0xB7, 0xB7),
            (0xBB, 0xBB),
            (0xBF, 0xBF),
            (0x2009, 0x2009),
            (0x2013, 0x2014),
            (0x2018, 0x201A),
            (0x201C, 0x201E),
            (0x2022, 0x2022),
            (0x2026, 0x2026),
            (0x202F, 0x202F),
            (0x2039, 0x203A),
        ),
    ),
)


def _tables() -> tuple[bytes, str, bytes]:
    classes = bytearray(0x110000)
    for index, cls in enumerate(CHAR_CLASSES):
        # Every character must count, or a stream of it would never reach any bound.
        if not 0 < cls.units < 256:
            raise ValueError(f"{cls.name}: a weight is 1 to 255 hundredths of a token")
        for first, last in cls.ranges:
            classes[first : last + 1] = bytes([index]) * (last + 1 - first)
    units = bytes(cls.units for cls in CHAR_CLASSES).ljust(256, b"\0")
    by_code_point = bytes(classes).translate(units)
    return bytes(classes), by_code_point.decode("latin-1"), by_code_point[:128].ljust(256, b"\0")


# The class of every code point, and its weight in hundredths of a token as a character (and
# for ASCII as a byte): 1.1 MB each, built once at import in a few milliseconds.
_CLASS_OF, _UNITS, _ASCII_UNITS = _tables()


def cost(
    prompt_tokens: int,
    completion_tokens: int,
    input_price: Decimal,
    output_price: Decimal,
) -> Decimal:
    """USD for a call: tokens times the per-million prices, exact to twelve decimals."""
    total = (
        Decimal(prompt_tokens) * input_price + Decimal(completion_tokens) * output_price
    ) / MILLION
    return total.quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def text_weight(text: str) -> float:
    """The estimated tokens of `text`, unrounded: the sum of its characters' class weights.

    Additive over concatenation, so a stream can add up the weights of its pieces.
    """
    return _units(text) / UNITS_PER_TOKEN


def estimate_tokens(text: str) -> int:
    """Estimated tokens of `text` (see the module docstring): `text_weight` rounded up."""
    return -(-_units(text) // UNITS_PER_TOKEN)


def _units(text: str) -> int:
    # Per streamed token this is the hot path: one C-level translate and sum, no Python loop
    # per character. The weight of a character is stored as a character whose ordinal is the
    # weight in hundredths of a token, so the translated text encodes to the weights' bytes.
    if text.isascii():
        return sum(text.encode("ascii").translate(_ASCII_UNITS))
    return sum(text.translate(_UNITS).encode("latin-1"))


def class_counts(text: str) -> dict[str, int]:
    """How many characters of `text` fall in each class (for measuring the weights)."""
    counts = Counter(map(_CLASS_OF.__getitem__, map(ord, text)))
    return {cls.name: counts.get(index, 0) for index, cls in enumerate(CHAR_CLASSES)}


def estimate_prompt_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """Estimated tokens of a prompt: each message's text and MESSAGE_OVERHEAD_TOKENS."""
    total = 0
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            content = " ".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        total += estimate_tokens(str(content)) + MESSAGE_OVERHEAD_TOKENS
    return total


def upper_prompt_tokens(estimate: int) -> int:
    """A bound on the prompt's real tokens from our estimate, for budget reservations.

    Safe because the estimate (text plus MESSAGE_OVERHEAD_TOKENS a message) times 4 exceeds the
    real text tokens of every sample and every crafted text measured (the worst real / estimate
    is 1.34 and 3.45) and each message's template (Qwen's 5 tokens, against 4 * 4), and the
    constant covers the template's fixed part (Qwen2.5's 29 tokens, with its default system
    prompt). Too large only refuses a call near the limit a little early: the reservation is
    released and the call billed at its real usage.
    """
    return PROMPT_UNDERCOUNT_FACTOR * estimate + PROMPT_TEMPLATE_TOKENS


def plain(amount: Decimal) -> str:
    """An amount as a plain decimal string with twelve places (never scientific notation)."""
    return format(amount.quantize(COST_QUANTUM), "f")


def readable(amount: Decimal) -> str:
    """An amount for people: trailing zeros dropped, but at least cents ("0.50", "0.000408")."""
    text = plain(amount).rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def usd(amount: Decimal) -> str:
    """USD for people, exact: "$0.50", "$0.000408", "$1,234.56"."""
    whole, _, fraction = readable(amount).partition(".")
    return f"${int(whole):,}.{fraction}"
