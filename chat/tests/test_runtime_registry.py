"""The registry of runtime patches (chutesweb/runtime): what each touches still exists, the
installed versions are the ones each was written for, and outside them nothing is applied.

Fast: no server runs. Installing patches changes classes for the whole process, so what
install() does is checked in child processes.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from typing import Any

import pytest

from chat.testing import processes
from chutesweb import runtime
from chutesweb.runtime import Patch

PATCHES = list(runtime.PATCHES.values())
# What install() applies (the others are applied per transport or per socket).
SERVER_PATCHES = [
    "body_limits",
    "direct_text_frames",
    "eager_writes",
    "free_closed_connections",
    "lazy_frame_logs",
]


def _resolve(target: str) -> Any:
    module_name, _, qualified = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for name in qualified.split("."):
        found = getattr(found, name)
    return found


def _assigned_in_mro(cls: type, attribute: str) -> bool:
    """Whether a method of the class or of one of its bases assigns `self.<attribute>`."""
    assignment = re.compile(rf"\bself\.{re.escape(attribute)}\b\s*(?::[^=\n]+)?=(?!=)")
    for klass in cls.__mro__:
        for member in vars(klass).values():
            function = member.fget if isinstance(member, property) else member
            function = inspect.unwrap(getattr(function, "__func__", function))
            if not inspect.isfunction(function):
                continue
            try:
                source = inspect.getsource(function)
            except (OSError, TypeError):
                continue
            if assignment.search(source):
                return True
    return False


def _ids(patch: Patch) -> str:
    return patch.name


@pytest.mark.parametrize("patch", PATCHES, ids=_ids)
def test_every_name_a_patch_touches_exists_in_the_installed_library(patch: Patch) -> None:
    assert patch.targets or patch.attributes
    for target in patch.targets:
        _resolve(target)  # raises when the module or a name is gone
    for target in patch.attributes:
        where, _, attribute = target.partition("#")
        cls = _resolve(where)
        assert isinstance(cls, type), target
        assert _assigned_in_mro(cls, attribute), f"{target}: no `self.{attribute} =` in its MRO"


def _locked() -> dict[str, str]:
    text = (processes.ROOT / "requirements.lock").read_text()
    return {
        re.sub(r"[-_.]+", "-", name).lower(): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE)
    }


@pytest.mark.parametrize("patch", PATCHES, ids=_ids)
def test_the_installed_and_locked_versions_are_the_supported_ones(patch: Patch) -> None:
    locked = _locked()
    for distribution, versions in patch.requires.items():
        assert versions, distribution
        assert metadata.version(distribution) in versions, (patch.name, distribution)
        assert locked[distribution.lower()] in versions, (patch.name, distribution)
    assert runtime.supported(patch) is True


@pytest.mark.parametrize("patch", PATCHES, ids=_ids)
def test_every_patch_names_what_it_works_around_and_when_to_delete_it(patch: Patch) -> None:
    assert patch.works_around.startswith("https://github.com/") or (
        patch.works_around.startswith("no upstream issue filed: ")
    )
    assert len(patch.delete_when) > 20
    # The table in the package's docstring says the same.
    table = runtime.__doc__ or ""
    entry = re.search(rf"^{patch.name}, in (\w+\.py)$", table, re.MULTILINE)
    assert entry is not None, f"{patch.name} is not in the table"
    assert (processes.ROOT / "chutesweb" / "runtime" / entry[1]).is_file()
    for distribution, versions in patch.requires.items():
        for version in versions:
            assert f"{distribution} {version}" in table
    for url in re.findall(r"https://\S+?(?=[ ,;)]|$)", patch.works_around):
        assert url in table, url


@pytest.mark.parametrize("patch", PATCHES, ids=_ids)
def test_another_version_turns_a_patch_off_with_one_warning(
    patch: Patch, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "_verdicts", {})
    monkeypatch.setattr(metadata, "version", lambda distribution: "0.0.1")
    with caplog.at_level(logging.WARNING, logger="chutesweb.runtime"):
        assert runtime.supported(patch) is False
        assert runtime.supported(patch) is False
    [record] = [r for r in caplog.records if r.name == "chutesweb.runtime"]
    message = record.getMessage()
    assert message.startswith(f"runtime patch {patch.name} is not applied")
    for distribution, versions in patch.requires.items():
        assert f"{distribution} 0.0.1" in message
        for version in versions:
            assert version in message


def test_a_missing_distribution_turns_a_patch_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing(distribution: str) -> str:
        raise metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(runtime, "_verdicts", {})
    monkeypatch.setattr(metadata, "version", missing)
    assert runtime.supported(runtime.UVICORN_WRITE_BUFFER) is False
    assert "uvicorn (none) is installed" in caplog.text


def test_patches_are_switched_off_by_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "_told", set())
    monkeypatch.setenv("RUNTIME_PATCHES_OFF", " linear_pool, ,eager_writes,nonsense")
    assert runtime.switched_off() == {"linear_pool", "eager_writes", "nonsense"}
    assert runtime.enabled(runtime.LINEAR_POOL) is False
    assert runtime.enabled(runtime.ASYNCIO_BACKEND) is True
    assert caplog.text.count("which is no runtime patch") == 1
    monkeypatch.delenv("RUNTIME_PATCHES_OFF")
    assert runtime.switched_off() == frozenset()
    assert runtime.enabled(runtime.LINEAR_POOL) is True


# Installs the patches twice, then reports which are in force, which stock names are still the
# libraries' own, and the warnings, per patch. argv[1]: "other" fakes every distribution's version.
INSTALL = textwrap.dedent(
    """
    import collections, functools, json, logging, pprint, sys, types
    from importlib import metadata

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor, tcp

    warnings = collections.Counter()

    class Count(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("runtime patch ") and " is not applied" in message:
                warnings[message.split()[2]] += 1
            elif "no runtime patch" in message:
                warnings["unknown"] += 1

    logging.getLogger("chutesweb.runtime").addHandler(Count())
    logging.getLogger("chutesweb.runtime").setLevel(logging.INFO)
    if sys.argv[1] == "other":
        metadata.version = lambda distribution: "0.0.1"

    import httpcore, httpx
    from autobahn import util
    from autobahn.websocket import protocol
    from daphne.http_protocol import WebRequest
    from daphne.server import Server

    from chat.upstream import netio
    from chutesweb import runtime
    from chutesweb.runtime import daphne_frames, httpcore_pool, socket_buffers

    BODY = ("gotLength", "handleContentChunk", "requestReceived")
    stock = {
        "eager_writes": [(tcp.Server, "write")],
        "lazy_frame_logs": [
            (protocol, "hltype"), (protocol, "hlval"), (protocol, "pformat"),
            (protocol.Timings, "__str__"),
        ],
        "body_limits": [(WebRequest, name) for name in BODY],
        "free_closed_connections": [(Server, "application_checker")],
    }
    before = {name: [getattr(o, a) for o, a in pairs] for name, pairs in stock.items()}

    first = runtime.install()
    second = runtime.install()

    untouched = {
        name: all(getattr(o, a) is b for (o, a), b in zip(pairs, before[name]))
        for name, pairs in stock.items()
    }
    untouched["eager_writes"] &= "write" not in vars(tcp.Server)
    untouched["lazy_frame_logs"] &= (
        protocol.hltype is util.hltype and protocol.pformat is pprint.pformat
    )
    untouched["body_limits"] &= not any(name in vars(WebRequest) for name in BODY)
    untouched["free_closed_connections"] &= (
        Server.application_checker.__qualname__ == "Server.application_checker"
    )

    daphne_server = types.SimpleNamespace(connections={})
    daphne_send = functools.partial(
        types.MethodType(Server.handle_reply, daphne_server), object()
    )
    untouched["direct_text_frames"] = daphne_frames.text_writer(daphne_send) is None

    transports = [httpx.AsyncHTTPTransport(), httpx.AsyncHTTPTransport()]
    for transport in transports:
        httpcore_pool.tune_transport(transport)
    pool = transports[0]._pool
    untouched["linear_pool"] = type(pool) is httpcore.AsyncConnectionPool
    untouched["asyncio_backend"] = not isinstance(pool._network_backend, netio.AsyncioBackend)

    twisted_transport = types.SimpleNamespace(dataBuffer=b"", offset=0, _tempDataLen=0)
    twisted_send = functools.partial(
        daphne_send.func, types.SimpleNamespace(transport=twisted_transport)
    )

    class UvicornProtocol:
        transport = types.SimpleNamespace(get_write_buffer_size=lambda: 0)

        async def send(self, message):
            pass

    probes = [socket_buffers.write_buffer_probe(twisted_send) for _ in range(2)]
    untouched["daphne_write_buffer"] = probes[0] is None
    probes = [socket_buffers.write_buffer_probe(UvicornProtocol().send) for _ in range(2)]
    untouched["uvicorn_write_buffer"] = probes[0] is None

    print(json.dumps({
        "first": sorted(first),
        "second": sorted(second),
        "untouched": untouched,
        "warnings": warnings,
    }))
    """
)


def run_install(mode: str, off: str = "") -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", INSTALL, mode],
        cwd=processes.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "RUNTIME_PATCHES_OFF": off},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_on_the_supported_versions_every_patch_is_applied() -> None:
    result = run_install("same")
    assert result["first"] == result["second"] == SERVER_PATCHES
    assert not any(result["untouched"].values()), result["untouched"]
    assert result["warnings"] == {}


def test_on_another_version_nothing_is_applied_and_each_patch_warns_once() -> None:
    result = run_install("other")
    assert result["first"] == result["second"] == []
    assert all(result["untouched"].values()), result["untouched"]
    # install() ran twice, each transport and socket probe twice: one warning per patch.
    assert result["warnings"] == dict.fromkeys(runtime.PATCHES, 1)


def test_patches_switched_off_leave_the_stock_path_and_the_others_run() -> None:
    off = [
        "eager_writes",
        "lazy_frame_logs",
        "direct_text_frames",
        "linear_pool",
        "daphne_write_buffer",
        "nonsense",
    ]
    result = run_install("same", ",".join(off))
    assert result["first"] == result["second"] == ["body_limits", "free_closed_connections"]
    untouched = result["untouched"]
    assert {name for name, stock in untouched.items() if stock} == set(off) - {"nonsense"}
    assert result["warnings"] == {"unknown": 1}
