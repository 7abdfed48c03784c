"""docs/architecture.md's tree matches the repository: every name it shows exists where it shows
it, and every package, and every module of the domain packages, is in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
NAME = re.compile(r"[\w.-]+(/[\w.-]+)*/?")
# Packages whose every module the tree names one by one; others are described as a whole.
LISTED_MODULE_BY_MODULE = ("chat/actions", "chat/billing", "chat/realtime", "chat/upstream")


def tree_paths() -> set[Path]:
    """The paths the tree's lines name: a line starts with one or more names (", " between
    them) and then, after two spaces, says what they are; a directory ends with "/" and holds
    the more indented lines below it. Lines that go on describing the line above are skipped."""
    block = DOC.read_text().split("## The tree", 1)[1].split("```", 2)[1]
    found: set[Path] = set()
    parents: list[tuple[int, Path]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        head = re.split(r"\s{2,}", line.strip())[0]
        names = [name.strip() for name in head.split(",")]
        if not all(NAME.fullmatch(name) for name in names):
            continue  # a description going on from the line above
        while parents and parents[-1][0] >= indent:
            parents.pop()
        parent = parents[-1][1] if parents else ROOT
        for name in names:
            path = parent / name.rstrip("/")
            # "management/commands/" names both directories.
            found.update(p for p in [path, *path.parents] if parent in p.parents)
            if name.endswith("/") and len(names) == 1:
                parents.append((indent, path))
    return found


def test_every_name_in_the_tree_exists() -> None:
    paths = tree_paths()
    assert len(paths) > 40
    missing = sorted(str(path.relative_to(ROOT)) for path in paths if not path.exists())
    assert not missing, f"docs/architecture.md names what is not there: {missing}"


def test_every_package_is_in_the_tree() -> None:
    paths = tree_paths()
    tests = ROOT / "chat" / "tests"
    packages = {
        init.parent
        for top in ("chat", "chutesweb")
        for init in (ROOT / top).rglob("__init__.py")
        if init.parent == tests or tests not in init.parents
    }
    absent = sorted(str(p.relative_to(ROOT)) for p in packages if p not in paths)
    assert not absent, f"docs/architecture.md leaves out these packages: {absent}"


def test_every_module_of_the_domain_packages_is_in_the_tree() -> None:
    paths = tree_paths()
    absent = sorted(
        str(module.relative_to(ROOT))
        for package in LISTED_MODULE_BY_MODULE
        for module in (ROOT / package).glob("*.py")
        if module.name != "__init__.py" and module not in paths
    )
    assert not absent, f"docs/architecture.md leaves out these modules: {absent}"
