"""The lock files agree with what we ask for, and with each other.

Every install (`make run`, `make test`, CI) takes its packages from requirements.lock and
requirements-dev.lock with `--require-hashes`; requirements.txt and requirements-dev.txt name the
direct dependencies. A pin changed in a .txt file without `make lock`, or a lock edited by hand,
would install something other than what the .txt file says: these tests catch both.
"""

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path, seen=None):
    """Name -> version of every `name==version` in a requirements file, following `-r`."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("-r "):
            found.update(pins(path.parent / line[3:].strip()))
            continue
        match = PIN.match(line)
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def locked(path):
    """Name -> (version, number of hashes) of every package in a compiled lock file."""
    packages: dict[str, list[Any]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonical(match.group(1))
            packages[current] = [match.group(2), 0]
        elif line.strip().startswith("--hash=sha256:") and current:
            packages[current][1] += 1
        elif not line.startswith(" "):
            current = None
    return {name: tuple(value) for name, value in packages.items()}


@pytest.mark.parametrize(
    "wanted, lock",
    [("requirements.txt", "requirements.lock"), ("requirements-dev.txt", "requirements-dev.lock")],
)
def test_every_direct_pin_is_locked_at_its_version(wanted, lock):
    asked = pins(ROOT / wanted)
    have = locked(ROOT / lock)
    assert asked, f"{wanted} names no package"
    wrong = {
        name: (version, have.get(name, ("missing",))[0])
        for name, version in asked.items()
        if have.get(name, (None,))[0] != version
    }
    assert not wrong, f"{lock} disagrees with {wanted} (asked, locked): {wrong}; run `make lock`"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_locked_package_carries_hashes(lock):
    packages = locked(ROOT / lock)
    assert len(packages) > 10
    unhashed = [name for name, (_, hashes) in packages.items() if hashes == 0]
    assert not unhashed, f"{lock} has packages without hashes: {unhashed}"


def test_the_two_locks_agree_on_every_package_they_share():
    runtime = locked(ROOT / "requirements.lock")
    development = locked(ROOT / "requirements-dev.lock")
    missing = sorted(set(runtime) - set(development))
    assert not missing, f"requirements-dev.lock lacks runtime packages: {missing}"
    differ = {
        name: (runtime[name][0], development[name][0])
        for name in runtime
        if runtime[name][0] != development[name][0]
    }
    assert not differ, f"the locks disagree (runtime, development): {differ}; run `make lock`"


def test_the_locks_name_no_index_of_this_machine():
    # A lock that names a local index or wheel directory would fail on any other machine.
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text()
        assert "--index-url" not in text and "--find-links" not in text, lock
        assert "file://" not in text, lock


def test_the_parser_reads_what_pip_compile_writes(tmp_path):
    # The checks above are only as good as the parser: it must see versions, extras and hashes,
    # and not give one package's hashes to the next.
    sample = tmp_path / "sample.lock"
    sample.write_text(
        "anyio==4.16.0 \\\n"
        "    --hash=sha256:aa \\\n"
        "    --hash=sha256:bb\n"
        "    # via httpx\n"
        "psycopg[binary]==3.3.9 \\\n"
        "    --hash=sha256:cc\n"
        "Twisted==26.10.0\n"
    )
    assert locked(sample) == {
        "anyio": ("4.16.0", 2),
        "psycopg": ("3.3.9", 1),
        "twisted": ("26.10.0", 0),
    }
