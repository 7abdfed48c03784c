"""The layout's rules: no import cycle among the modules of `chat` and `chutesweb`, and no Django
in the upstream client (`chat/upstream/`) but its settings adapter.

The import graph is read from the source with `ast`: every `import` and `from ... import`, at
module level or inside a function (a function's import is a dependency too, only a later one),
relative imports resolved. Imports under `if TYPE_CHECKING:` are left out: they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("chat", "chutesweb")
UPSTREAM = ROOT / "chat" / "upstream"
# The one module of chat/upstream that may reach Django (it reads settings when asked).
SETTINGS_ADAPTER = "chat.upstream.settings"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """Each module of the packages, and the modules of the packages it imports."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            # The most specific known module each import names: `from a import b` is the module
            # a.b when there is one, else a.
            if isinstance(node, ast.Import):
                choices = [[alias.name] for alias in node.names]
            else:
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                choices = [[f"{base}.{alias.name}", base] for alias in node.names]
            for options in choices:
                target = next((option for option in options if option in known), None)
                if target is not None and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the path of modules from a module back to itself, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_names_its_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_holds_module_and_function_level_imports_and_resolves_relative_ones() -> None:
    graph = import_graph()
    # Module level, relative: the consumer imports its engine.
    assert "chat.realtime.engine" in graph["chat.realtime.consumer"]
    # Function level, relative, inside the runtime patches' package.
    assert "chutesweb.runtime.daphne_bodies" in graph["chutesweb.runtime"]
    # `from chat import errors` names the module chat.errors, not the package.
    assert "chat.errors" in graph["chat.billing.budgets"]


def test_no_module_of_chat_or_chutesweb_imports_itself_back() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


UPSTREAM_MODULES = sorted(
    _module_name(path) for path in UPSTREAM.rglob("*.py") if _module_name(path) != SETTINGS_ADAPTER
)


@pytest.mark.parametrize("module", UPSTREAM_MODULES)
def test_the_upstream_client_imports_no_django(module: str) -> None:
    """Run in a fresh interpreter: this one has Django loaded already."""
    check = (
        f"import {module}, sys; "
        "loaded = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')); "
        "print(' '.join(loaded)); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{module} imports Django: {done.stdout} {done.stderr}"
