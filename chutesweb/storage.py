"""Static files in production: compressed, with hashed names, ES module imports included.

The chat page's modules import each other; rewriting those imports to hashed names keeps a page
from mixing old and new modules after a deploy. Django can do that with regular expressions
(`support_js_module_import_aggregation`), but they are not JavaScript-aware: a comment such as
"Export and import. ..." starts an `export ... from "..."` match that runs on into the real
import, which is then hashed twice and names a file that does not exist. So the specifiers are
found by `module_specifiers()` below, a small scanner that knows comments, strings, template
literals and regular expression literals, and only then handed to Django's own URL rewriting.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from types import CodeType
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib.staticfiles.storage import HashedFilesMixin
from django.core.exceptions import ImproperlyConfigured
from whitenoise.storage import CompressedManifestStaticFilesStorage

# JavaScript files whose module specifiers are rewritten.
MODULE_GLOBS = ("*.js", "*.mjs")
# What replaces a specifier's string literal: Django's converter fills in the hashed URL.
SPECIFIER_TEMPLATE = "%(quote)s%(url)s%(quote)s"


class ScanError(ValueError):
    """A file the scanner cannot follow. A ValueError, so collectstatic reports it and fails."""


class Token(NamedTuple):
    kind: str  # name, number, string, template, regex, punct
    text: str
    start: int
    end: int


class Specifier(NamedTuple):
    """A module specifier's string literal: source[start:end] is it, quotes included."""

    start: int
    end: int
    quote: str
    value: str


# Everything but what depends on what came before: a slash (division, regular expression or
# comment), braces and backquotes (template literals nest), and unterminated strings.
_TOKEN = re.compile(
    r"""(?P<space>[\s\ufeff]+)
    |(?P<comment>//[^\n\r\u2028\u2029]*|/\*.*?\*/)
    |(?P<string>'(?:[^'\\\n\r]|\\(?:\r\n|.))*'|"(?:[^"\\\n\r]|\\(?:\r\n|.))*")
    |(?P<name>(?:[^\W\d]|[$\\])[\w$\\\u200c\u200d]*)
    |(?P<number>\d[\w$]*(?:\.[\w$]*)?|\.\d[\w$]*)
    |(?P<punct>\+\+|--|\.\.\.|\?\.(?!\d)|=>|[^/`{}'"\s])""",
    re.VERBOSE | re.DOTALL,
)
_LINE_END = re.compile(r"[\n\r\u2028\u2029]")
_FLAGS = re.compile(r"[\w$]*")
# After these words a slash starts a regular expression; after any other name it divides.
_KEYWORDS_BEFORE_EXPRESSION = frozenset(
    ("return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do",
     "else", "yield", "await", "extends")
)  # fmt: skip


def _line(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def _skip_template_chars(source: str, at: int) -> tuple[int, bool]:
    """From inside a template literal, the offset after its closing backquote (False) or after
    the `${` that opens a substitution (True)."""
    start = at
    while at < len(source):
        char = source[at]
        if char == "`":
            return at + 1, False
        if char == "\\":
            at += 2
        elif char == "$" and source.startswith("${", at):
            return at + 2, True
        else:
            at += 1
    raise ScanError(f"unterminated template literal at line {_line(source, start)}")


def _skip_regex(source: str, start: int) -> int:
    """The offset after the regular expression literal (flags included) starting at `start`."""
    at, in_class = start + 1, False
    while at < len(source):
        char = source[at]
        if char == "\\":
            at += 2
            continue
        if _LINE_END.match(char):
            break
        if char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "/" and not in_class:
            match = _FLAGS.match(source, at + 1)
            assert match is not None  # [\w$]* matches the empty string
            return match.end()
        at += 1
    raise ScanError(f"unterminated regular expression literal at line {_line(source, start)}")


def _slash_starts_regex(previous: Token | None) -> bool:
    """The usual heuristic: a slash where an expression may start begins a regular expression;
    after a value (a name, a literal, a closing bracket) it is a division."""
    if previous is None:
        return True
    if previous.kind == "name":
        return previous.text in _KEYWORDS_BEFORE_EXPRESSION
    if previous.kind == "punct":
        return previous.text not in (")", "]", "}", "++", "--")
    # A template piece that opens a substitution ends in "${": an expression starts there.
    return previous.kind == "template" and previous.text.endswith("${")


def tokens(source: str) -> Iterator[Token]:
    """The significant tokens of JavaScript source: comments and white space are dropped.

    A template literal yields one `template` token per piece of text between substitutions;
    the code inside `${...}` is scanned like any other code.
    """
    at, previous = 0, None
    # One entry per open brace: "{" for a block or object, "${" for a template substitution.
    braces: list[str] = []
    if source.startswith("#!"):
        match = _LINE_END.search(source)
        at = match.start() if match else len(source)
    while at < len(source):
        start = at
        match = _TOKEN.match(source, at)
        if match:
            kind, at = match.lastgroup or "", match.end()
            if kind in ("space", "comment"):
                continue
        else:
            char = source[at]
            if char == "`" or (char == "}" and braces and braces[-1] == "${"):
                if char == "}":
                    braces.pop()
                at, substitution = _skip_template_chars(source, at + 1)
                if substitution:
                    braces.append("${")
                kind = "template"
            elif char == "{":
                at, kind = at + 1, "punct"
                braces.append("{")
            elif char == "}":
                at, kind = at + 1, "punct"
                if braces:
                    braces.pop()
            elif source.startswith("/*", at):
                raise ScanError(f"unterminated comment at line {_line(source, at)}")
            elif char == "/" and _slash_starts_regex(previous):
                at, kind = _skip_regex(source, at), "regex"
            elif char == "/":
                at = at + 2 if source.startswith("/=", at) else at + 1
                kind = "punct"
            else:
                raise ScanError(f"unterminated string literal at line {_line(source, at)}")
        previous = Token(kind, source[start:at], start, at)
        yield previous
    if braces and braces[-1] == "${":
        raise ScanError("unterminated template literal substitution at the end of the file")


def _is(tokens: list[Token], index: int, kind: str, text: str | None = None) -> bool:
    if index >= len(tokens):
        return False
    token = tokens[index]
    return token.kind == kind and (text is None or token.text == text)


def _after_braces(tokens: list[Token], index: int) -> int | None:
    """`tokens[index]` is "{" of an import or export list: the index after its "}", or None
    when what is inside is not such a list."""
    index += 1
    while index < len(tokens):
        token = tokens[index]
        if _is(tokens, index, "punct", "}"):
            return index + 1
        if token.kind not in ("name", "string") and not _is(tokens, index, "punct", ","):
            return None
        index += 1
    return None


def _after_import_clause(tokens: list[Token], index: int) -> int | None:
    """The index after `x`, `* as x`, `{...}`, `x, * as y` or `x, {...}`, or None."""
    if _is(tokens, index, "name"):
        # `import defer * as x` and `import source x` carry a phase word first.
        if tokens[index].text in ("defer", "source") and (
            _is(tokens, index + 1, "punct", "*")
            or (_is(tokens, index + 1, "name") and not _is(tokens, index + 1, "name", "from"))
        ):
            index += 1
            if _is(tokens, index, "name"):
                return index + 1
        else:
            index += 1
            if not _is(tokens, index, "punct", ","):
                return index
            index += 1
    if _is(tokens, index, "punct", "*"):
        if _is(tokens, index + 1, "name", "as") and _is(tokens, index + 2, "name"):
            return index + 3
        return None
    if _is(tokens, index, "punct", "{"):
        return _after_braces(tokens, index)
    return None


def _after_export_clause(tokens: list[Token], index: int) -> int | None:
    """The index after `*`, `* as x` or `{...}` of a re-export, or None."""
    if _is(tokens, index, "punct", "*"):
        if _is(tokens, index + 1, "name", "as") and (
            _is(tokens, index + 2, "name") or _is(tokens, index + 2, "string")
        ):
            return index + 3
        return index + 1
    if _is(tokens, index, "punct", "{"):
        return _after_braces(tokens, index)
    return None


def _specifier_index(tokens: list[Token], index: int) -> int | None:
    """`tokens[index]` is the word import or export: the index of the string token that names
    the module it loads, or None when it loads none (`export const`, `import.meta`, ...)."""
    if index and tokens[index - 1].kind == "punct" and tokens[index - 1].text in (".", "?."):
        return None  # a property: thing.import(...)
    word, index = tokens[index].text, index + 1
    if word == "import":
        if _is(tokens, index, "string"):
            return index
        if _is(tokens, index, "punct", "("):
            ends = _is(tokens, index + 2, "punct", ")") or _is(tokens, index + 2, "punct", ",")
            return index + 1 if _is(tokens, index + 1, "string") and ends else None
        after = _after_import_clause(tokens, index)
    else:
        after = _after_export_clause(tokens, index)
    if (
        after is not None
        and _is(tokens, after, "name", "from")
        and _is(tokens, after + 1, "string")
    ):
        return after + 1
    return None


@functools.lru_cache(maxsize=256)
def module_specifiers(source: str) -> tuple[Specifier, ...]:
    """Every module specifier of `import ... from "x"`, `export ... from "x"`, `import "x"` and
    `import("x")` in JavaScript source, in order; never text inside a comment or a literal.

    Cached: collectstatic reads each file again on every one of its passes."""
    found = []
    scanned = list(tokens(source))
    for index, token in enumerate(scanned):
        if token.kind != "name" or token.text not in ("import", "export"):
            continue
        at = _specifier_index(scanned, index)
        if at is not None:
            literal = scanned[at]
            quote, value = literal.text[0], literal.text[1:-1]
            found.append(Specifier(literal.start, literal.end, quote, value))
    return tuple(found)


class _Match:
    """What Django's URL converter reads of a regular expression match."""

    def __init__(self, **groups: str) -> None:
        self.groups = groups

    def groupdict(self) -> dict[str, str]:
        return dict(self.groups)


class ModuleImports:
    """In place of one of Django's compiled patterns: `sub` hands each module specifier to the
    converter Django gives it, as Django does with a pattern's matches."""

    def sub(self, converter: Callable[[Any], str], content: str) -> str:
        pieces, done = [], 0
        for specifier in module_specifiers(content):
            if not rewritable(specifier.value):
                continue
            if "\\" in specifier.value:
                raise ScanError(f"escape sequence in module specifier {specifier.value!r}")
            match = _Match(
                matched=content[specifier.start : specifier.end],
                url=specifier.value,
                quote=specifier.quote,
            )
            pieces += [content[done : specifier.start], converter(match)]
            done = specifier.end
        return "".join([*pieces, content[done:]])


def rewritable(value: str) -> bool:
    """Files of this site: relative paths and paths under STATIC_URL. Bare names ("lit") and
    other URLs are left as they are: they are the import map's or another site's business."""
    return value.startswith(("./", "../")) or value.startswith(settings.STATIC_URL)


def _names_used(code: CodeType) -> set[str]:
    """The attribute and global names a function's code uses, its comprehensions' included."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            names |= _names_used(constant)
    return names


def check_django_internals(storage: HashedFilesMixin) -> None:
    """Fail at start-up, not with silently stale imports, when a Django upgrade changed what
    StaticStorage relies on: `_patterns` (glob -> [(pattern, template)]), applied by
    `post_process` and `_post_process` through `pattern.sub(converter, content)`, where the
    converter from `url_converter` reads the match's `matched` and `url` groups and returns
    `template % groups` with the hashed URL."""
    patterns = getattr(storage, "_patterns", None)
    problems = []
    if not isinstance(patterns, dict) or not all(
        isinstance(entries, list) and all(len(entry) == 2 for entry in entries)
        for entries in patterns.values()
    ):
        problems.append("_patterns is no longer a dict of [(pattern, template)] lists")
    else:
        # Django's own module regexes would still break what this storage rewrites.
        for glob in MODULE_GLOBS:
            for pattern, _ in patterns.get(glob, []):
                if "import" in getattr(pattern, "pattern", ""):
                    problems.append(f"Django's JavaScript module patterns are on for {glob}")
    # _post_process is private to Django (not in its stubs): this checks it on purpose.
    private = HashedFilesMixin._post_process  # type: ignore[attr-defined]  # Django's private
    for method in (HashedFilesMixin.post_process, private):
        if "_patterns" not in _names_used(method.__code__):
            problems.append(f"{method.__name__} no longer reads _patterns")
    if "sub" not in _names_used(private.__code__):
        problems.append("_post_process no longer calls pattern.sub")
    if not problems:
        converter = storage.url_converter(
            "chat/js/app.js", {"chat/js/api.js": "chat/js/api.0123456789ab.js"}, SPECIFIER_TEMPLATE
        )
        # A stand-in for a match, as ModuleImports hands it: the converter reads groupdict().
        seen = converter(_Match(matched='"./api.js"', url="./api.js", quote='"'))  # type: ignore[arg-type]  # stand-in match
        if seen != '"./api.0123456789ab.js"':
            problems.append(f"url_converter rewrote './api.js' as {seen!r}")
    if problems:
        raise ImproperlyConfigured(
            "chutesweb.storage.StaticStorage relies on Django's HashedFilesMixin internals, which "
            f"changed: {'; '.join(problems)}. Update chutesweb/storage.py for this Django."
        )


class StaticStorage(CompressedManifestStaticFilesStorage):
    # Django's regular expressions for module imports stay off: ModuleImports replaces them.
    support_js_module_import_aggregation = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_django_internals(self)
        for glob in MODULE_GLOBS:
            self._patterns.setdefault(glob, []).append((ModuleImports(), SPECIFIER_TEMPLATE))
