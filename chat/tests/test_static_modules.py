"""Production static files: every ES module import of every collected file names a file that
exists, and a hashed module imports only hashed modules, whatever its comments and strings say."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles.storage import HashedFilesMixin
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chutesweb import storage as storage_module

# Deliberately over-inclusive and independent of the storage's scanner: every relative path
# quoted after `from` or `import` (or `import(`) anywhere in the text, comments and strings too.
IMPORT_ANYWHERE = re.compile(r"""\b(?:from|import)\s*\(?\s*(["'])(\.\.?/[^"'\r\n]*)\1""")
PRODUCTION_STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "chutesweb.storage.StaticStorage"},
}


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """collectstatic with the production storage, into a folder of its own."""
    root = tmp_path_factory.mktemp("static-root")
    with override_settings(DEBUG=False, STATIC_ROOT=str(root), STORAGES=PRODUCTION_STORAGES):
        call_command("collectstatic", interactive=False, verbosity=0)
    yield root


def relative_imports(text: str) -> list[str]:
    return [match.group(2) for match in IMPORT_ANYWHERE.finditer(text)]


def test_every_module_import_of_every_collected_file_names_a_file_that_exists(
    collected: Path,
) -> None:
    scripts = [*collected.rglob("*.js"), *collected.rglob("*.mjs")]
    assert len(scripts) > 20
    missing = [
        f"{script.relative_to(collected)} imports {target}"
        for script in scripts
        for target in relative_imports(script.read_text())
        if not (script.parent / target).is_file()
    ]
    assert missing == []


def test_a_hashed_module_imports_only_hashed_modules(collected: Path) -> None:
    manifest = json.loads((collected / "staticfiles.json").read_text())["paths"]
    hashed = set(manifest.values())
    mixed = []
    for original, name in manifest.items():
        if not original.endswith((".js", ".mjs")):
            continue
        for target in relative_imports((collected / name).read_text()):
            resolved = (collected / name).parent.joinpath(target).resolve()
            if str(resolved.relative_to(collected.resolve())) not in hashed:
                mixed.append(f"{name} imports {target}")
    assert mixed == []
    # The chat page's entry point reaches its modules, the vendored libraries included.
    assert "./api.js" in relative_imports((collected / "chat/js/app.js").read_text())
    assert relative_imports((collected / manifest["chat/js/markdown.js"]).read_text()) == [
        manifest[f"vendor/{path}"].replace("vendor/", "../../vendor/")
        for path in (
            "marked-18.2.1/marked.esm.js",
            "dompurify-3.4.18/purify.es.mjs",
            "highlight.js-11.12.0/highlight.min.js",
        )
    ]


# Property tests: real imports among comments, strings and template literals that talk about
# imports. The storage must rewrite exactly the real specifiers and leave every other byte.

MODULES = [f"./mod{index}.js" for index in range(4)] + ["../lib/util.js"]
SOURCE_NAME = "chat/js/main.js"
HASHED = {
    "chat/js/mod0.js": "chat/js/mod0.000000000000.js",
    "chat/js/mod1.js": "chat/js/mod1.111111111111.js",
    "chat/js/mod2.js": "chat/js/mod2.222222222222.js",
    "chat/js/mod3.js": "chat/js/mod3.333333333333.js",
    "chat/lib/util.js": "chat/lib/util.444444444444.js",
}


def hashed(specifier: str) -> str:
    target = "chat/lib/util.js" if specifier.startswith("../") else f"chat/js/{specifier[2:]}"
    return specifier.rsplit("/", 1)[0] + "/" + HASHED[target].rsplit("/", 1)[1]


# Words that fool pattern matching, quotes, paths and JavaScript punctuation.
WORDS = st.sampled_from(
    [
        "import", "export", "from", "as", "*", "{", "}", "(", ")", ";", ",", "'", '"', "`",
        "./mod0.js", "../lib/util.js", "./x.js", "/", "*/", "/*", "//", "${", "\\", " ", "\n",
        "Export and import.", "import * as api from", 'from "./api.js";', "import(",
    ]
)  # fmt: skip
TEXT = st.lists(WORDS, max_size=12).map("".join)


def quoted(text: str, quote: str) -> str:
    escaped = text.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n")
    return quote + escaped + quote


def template_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("`", "\\`").replace("${", "\\${")


@st.composite
def template(draw: st.DrawFn, depth: int = 0) -> str:
    """A template literal whose substitutions hold strings, objects and further templates."""
    parts = [template_text(draw(TEXT))]
    for _ in range(draw(st.integers(0, 2 if depth < 2 else 0))):
        inner = draw(
            st.one_of(
                TEXT.map(lambda text: quoted(text, "'")),
                TEXT.map(lambda text: "{ key: " + quoted(text, '"') + " }.key"),
                template(depth + 1),
            )
        )
        parts += ["${ " + inner + " }", template_text(draw(TEXT))]
    return "`" + "".join(parts) + "`"


def line_comment(text: str) -> str:
    # A `//# sourceMappingURL=` line is a different rewrite: keep "#" out of the way.
    return "// " + text.replace("\n", " ").replace("#", "") + "\n"


def block_comment(text: str) -> str:
    return "/* " + text.replace("*/", "* /") + " */"


NOISE = st.one_of(
    TEXT.map(line_comment),
    TEXT.map(block_comment),
    TEXT.map(lambda text: "const s@ = " + quoted(text, "'") + ";\n"),
    TEXT.map(lambda text: "const d@ = " + quoted(text, '"') + ";\n"),
    template().map(lambda literal: "const t@ = " + literal + ";\n"),
    st.just('const r@ = /import "\\.\\/x.js"|[/"\']/g, half@ = r@.lastIndex / 2 / "from";\n'),
    st.just("({}).import?.('./mod0.js'); const meta@ = import.meta.url;\n"),
)


@st.composite
def statement(draw: st.DrawFn) -> tuple[str, str | None]:
    """A real import or export (and its specifier), or noise (and None)."""
    if draw(st.booleans()):
        return draw(NOISE), None
    module = draw(st.sampled_from(MODULES))
    quote = draw(st.sampled_from(["'", '"']))
    form = draw(
        st.sampled_from(
            [
                "import {a as a@, b as c@} from %s;",
                "import * as ns@ from %s;",
                "import def@, { x as x@ } from %s;",
                "import %s;",
                "export * from %s;",
                "export { y as z@ } from %s;",
                "export * as all@ from %s;",
                "const loaded@ = await import(%s);",
                "import{q as q@}from%s",
            ]
        )
    )
    comment = draw(st.sampled_from(["", " /* import './x.js' */", " // from './x.js'"]))
    return form % (quote + "%s" + quote) + comment + "\n", module


def program(statements: list[tuple[str, str | None]], rewrite: bool) -> str:
    """The statements as one module; "@" in a statement becomes its index, so that every name
    is declared once and the module is valid JavaScript."""
    out = []
    for index, (text, module) in enumerate(statements):
        code = text.replace("@", str(index))
        out.append(code % (hashed(module) if rewrite else module) if module else code)
    return "".join(out)


def rewrite_as_collectstatic_does(source: str, tmp: Path) -> str:
    """Apply the storage's JavaScript patterns as HashedFilesMixin._post_process does."""
    storage = storage_module.StaticStorage(location=str(tmp))
    for pattern, template_ in storage._patterns["*.js"]:
        converter = storage.url_converter(SOURCE_NAME, dict(HASHED), template_)
        source = pattern.sub(converter, source)
    return source


@hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(statement(), min_size=1, max_size=8))
def test_only_the_real_imports_are_rewritten_and_nothing_else_changes(
    tmp_path: Path, statements: list[tuple[str, str | None]]
) -> None:
    source = program(statements, rewrite=False)
    try:
        rewritten = rewrite_as_collectstatic_does(source, tmp_path)
    except ValueError as error:  # a specifier hashed twice names a file that does not exist
        pytest.fail(f"{error}\n--- source ---\n{source}")
    assert rewritten == program(statements, rewrite=True), source


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(statement(), min_size=1, max_size=8))
def test_the_scanner_finds_exactly_the_real_specifiers(
    statements: list[tuple[str, str | None]],
) -> None:
    source = program(statements, rewrite=False)
    found = storage_module.module_specifiers(source)
    assert [found.value for found in found] == [module for _, module in statements if module]
    for specifier in found:
        assert source[specifier.start : specifier.end] == (
            specifier.quote + specifier.value + specifier.quote
        )


def test_paths_under_static_url_are_rewritten_and_other_specifiers_left_alone(
    tmp_path: Path,
) -> None:
    source = (
        'import "/static/chat/js/mod1.js";\nimport "lit";\n'
        'import "https://example.com/x.js";\nimport("/elsewhere/y.js");\n'
    )
    assert rewrite_as_collectstatic_does(source, tmp_path) == source.replace(
        "/static/chat/js/mod1.js", "/static/chat/js/mod1.111111111111.js"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # A division, then a string: the slash must not start a regular expression.
        ('let a = b / 2; import "./x.js"; let c = d / 3;', ["./x.js"]),
        # A regular expression holding a quote and the word import.
        ('const r = /"import "\\/y.js"/; import "./x.js";', ["./x.js"]),
        # A class in a regular expression ends only at its "]".
        ('const r = /[/"]import/; import "./x.js";', ["./x.js"]),
        # After a closing parenthesis a slash divides.
        ('if ((a) / 2 > "import ") {} import("./x.js");', ["./x.js"]),
        # Bare names and other sites are found (and left alone by the storage).
        ('import "lit"; import "https://example.com/x.js";', ["lit", "https://example.com/x.js"]),
        # Not imports: a property, a method named import, import.meta, exports of values.
        (
            'a.import("./x.js"); class T { import(file) {} } import.meta.url;'
            ' export const from = "./x.js"; export default "./y.js";',
            [],
        ),
    ],
)
def test_the_scanner_on_the_tricky_cases(source: str, expected: list[str]) -> None:
    assert [specifier.value for specifier in storage_module.module_specifiers(source)] == expected


@pytest.mark.parametrize(
    "source",
    ['import "./x.js', "/* open", "const t = `${a", "let r = /abc\n/;", "`no end"],
)
def test_what_the_scanner_cannot_follow_fails_collectstatic(source: str) -> None:
    with pytest.raises(ValueError, match="unterminated"):
        storage_module.module_specifiers(source)


def test_a_django_that_changed_what_the_storage_relies_on_stops_it_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def ignores_hashes(*args: Any) -> Callable[[Any], str]:
        return lambda match: match.groupdict()["matched"]

    monkeypatch.setattr(HashedFilesMixin, "url_converter", ignores_hashes)
    with pytest.raises(ImproperlyConfigured, match="url_converter"):
        storage_module.StaticStorage(location=str(tmp_path))


def test_django_s_own_module_patterns_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(storage_module.StaticStorage, "support_js_module_import_aggregation", True)
    with pytest.raises(ImproperlyConfigured, match="module patterns are on"):
        storage_module.StaticStorage(location=str(tmp_path))
