"""Every change the app makes to other libraries' private internals, each gated on the exact
versions it was written and tested against.

A patch reads or replaces names that its library does not promise to keep. Each one below is
applied only when every distribution it requires is installed at one of the versions listed;
outside these versions, one warning is logged (naming the patch, the installed and the supported
versions) and the stock path runs: the library's own code, as if the patch did not exist.
`RUNTIME_PATCHES_OFF=name,name` switches patches off by name (`RUNTIME_PATCHES_OFF=eager_writes`,
`RUNTIME_PATCHES_OFF=direct_text_frames`, ...), for measuring what each one gains
(docs/benchmarks.md). chat/tests/test_runtime_registry.py checks that every name a patch touches
still exists in the installed libraries and that the installed versions are the supported ones.

The table (patch, in module; what it touches; versions; what it works around; when to delete it):

eager_writes, in twisted_writes.py
    touches       twisted.internet.tcp.Server.write (replaced); its write buffer's privates
    versions      Twisted 26.10.0
    works around  https://github.com/twisted/twisted/issues/5303
    delete when   Twisted's TCP transport sends in write() when nothing is queued, or the app
                  no longer runs under daphne

lazy_frame_logs, in autobahn_logs.py
    touches       autobahn.websocket.protocol's hltype, hlval, pformat and Timings.__str__
    versions      autobahn 26.10.2
    works around  no upstream issue filed (to file: build sendData's debug arguments only when
                  debug logging is on)
    delete when   autobahn builds its per-frame and per-connection debug arguments only when
                  the line is logged

direct_text_frames, in daphne_frames.py
    touches       daphne's Server.handle_reply and connections; autobahn's send state, options
                  and traffic statistics of a connection
    versions      daphne 4.2.3, autobahn 26.10.2
    works around  no upstream issue filed (to file: a fast path in autobahn's sendMessage for
                  an unmasked, unfragmented, uncompressed message)
    delete when   bench.frames measures no gain over daphne's own send, or the app no longer
                  runs under daphne

body_limits, in daphne_bodies.py
    touches       daphne's WebRequest.gotLength, handleContentChunk and requestReceived
                  (Twisted's, wrapped); Twisted's HTTPChannel._command, _path, _networkProducer
    versions      daphne 4.2.3, Twisted 26.10.0
    works around  https://github.com/django/daphne/issues/483
    delete when   daphne refuses a body over a limit before reading it

free_closed_connections, in daphne_connections.py
    touches       daphne's Server.application_checker (wrapped) and connections; the references
                  between a closed connection's request, channel and websocket protocol
    versions      daphne 4.2.3, autobahn 26.10.2, Twisted 26.10.0
    works around  no upstream issue filed (to file: daphne leaves each closed websocket
                  connection in reference cycles, for the collector's full passes)
    delete when   a closed daphne websocket connection is freed by reference counting alone

linear_pool, in httpcore_pool.py
    touches       httpx's AsyncHTTPTransport._pool, whose class becomes a subclass of httpcore's
                  AsyncConnectionPool overriding its _assign_requests_to_connections
    versions      httpcore 1.0.9, httpx 0.28.1
    works around  https://github.com/encode/httpcore/pull/1000 (keep-alive counting) and
                  https://github.com/encode/httpcore/issues/1093 (a connection stranded by a
                  cancelled request)
    delete when   a released httpcore counts only idle connections against the keep-alive limit
                  and closes the connection a cancelled request leaves

asyncio_backend, in httpcore_pool.py
    touches       the pool's _network_backend, set to chat/upstream/netio.py's asyncio backend
                  (which implements httpcore's public network-backend interface)
    versions      httpcore 1.0.9, httpx 0.28.1
    works around  https://github.com/encode/httpx/issues/3215 (and
                  https://github.com/encode/httpcore/pull/930, closed as wontfix)
    delete when   httpx's transport takes a network backend (pass it there), or httpcore's own
                  backend costs no more per request

daphne_write_buffer, in socket_buffers.py
    touches       the Twisted transport's dataBuffer, offset and _tempDataLen behind daphne's send
    versions      daphne 4.2.3, Twisted 26.10.0
    works around  no upstream issue filed (to file: an ASGI extension telling a websocket's
                  application how many bytes its connection holds unsent)
    delete when   the ASGI server tells the application what a connection holds unsent

uvicorn_write_buffer, in socket_buffers.py
    touches       the asyncio transport of uvicorn's websocket protocol (WebSocketsSansIOProtocol,
                  what `--ws auto` picks) behind its send
    versions      uvicorn 0.54.0
    works around  no upstream issue filed (the same extension as daphne_write_buffer)
    delete when   the ASGI server tells the application what a connection holds unsent

Not gated, since they use only public APIs (any version): server_lifecycle.py (start the
background work with daphne's reactor, finish replies before it stops) and collector.py (the
garbage collector's thresholds and freeze).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    """A change to a library's private internals, and what it is written for."""

    name: str
    # Distribution name -> the exact versions the patch was written and tested against.
    requires: Mapping[str, frozenset[str]]
    # The upstream issue it works around, or "no upstream issue filed" and what the library does.
    works_around: str
    # The condition for deleting it.
    delete_when: str
    # What it reads or replaces, as "module:Qualified.name" (import, then getattr).
    targets: tuple[str, ...] = ()
    # Instance attributes it reads or replaces, as "module:Class#attr": assigned as `self.attr`
    # somewhere in the class's MRO.
    attributes: tuple[str, ...] = ()


EAGER_WRITES = Patch(
    name="eager_writes",
    requires={"Twisted": frozenset({"26.10.0"})},
    works_around="https://github.com/twisted/twisted/issues/5303",
    delete_when=(
        "Twisted's TCP transport sends in write() when nothing is queued, or the app no longer "
        "runs under daphne"
    ),
    targets=(
        "twisted.internet.tcp:Server.write",
        "twisted.internet.tcp:Server.writeSomeData",
        "twisted.internet.tcp:Server.TLS",
        "twisted.internet.tcp:Server.connected",
        "twisted.internet.tcp:Server.disconnecting",
        "twisted.internet.tcp:Server._writeDisconnected",
        "twisted.internet.tcp:Server.dataBuffer",
        "twisted.internet.tcp:Server.offset",
    ),
    attributes=("twisted.internet.tcp:Server#_tempDataLen",),
)

LAZY_FRAME_LOGS = Patch(
    name="lazy_frame_logs",
    requires={"autobahn": frozenset({"26.10.2"})},
    works_around=(
        "no upstream issue filed: autobahn's WebSocketProtocol.sendData builds the arguments of "
        "its per-frame debug log (terminal colours through click.style) and _connectionMade "
        "pformats its settings for every connection, whether debug logging is on or not"
    ),
    delete_when=(
        "autobahn builds its per-frame and per-connection debug arguments only when the line "
        "is logged"
    ),
    targets=(
        "autobahn.websocket.protocol:hltype",
        "autobahn.websocket.protocol:hlval",
        "autobahn.websocket.protocol:pformat",
        "autobahn.websocket.protocol:Timings.__str__",
    ),
    attributes=("autobahn.websocket.protocol:Timings#_timings",),
)

DIRECT_TEXT_FRAMES = Patch(
    name="direct_text_frames",
    requires={"daphne": frozenset({"4.2.3"}), "autobahn": frozenset({"26.10.2"})},
    works_around=(
        "no upstream issue filed: a text message sent through daphne's handle_reply takes eight "
        "calls through daphne's reply coroutine and autobahn's message, frame and data layers "
        "before it reaches the transport"
    ),
    delete_when=(
        "bench.frames measures no gain over daphne's own send, or the app no longer runs "
        "under daphne"
    ),
    targets=(
        "daphne.server:Server.handle_reply",
        "daphne.ws_protocol:logger",
        "autobahn.websocket.protocol:WebSocketProtocol.STATE_OPEN",
        "autobahn.websocket.protocol:WebSocketProtocol.SEND_STATE_GROUND",
        # The protocol copies its options from its factory through these names.
        "autobahn.websocket.protocol:WebSocketServerProtocol.CONFIG_ATTRS",
    ),
    attributes=(
        "daphne.server:Server#connections",
        "daphne.ws_protocol:WebSocketProtocol#state",
        "daphne.ws_protocol:WebSocketProtocol#send_state",
        "daphne.ws_protocol:WebSocketProtocol#send_queue",
        "daphne.ws_protocol:WebSocketProtocol#_perMessageCompress",
        "daphne.ws_protocol:WebSocketProtocol#trackedTimings",
        "daphne.ws_protocol:WebSocketProtocol#trafficStats",
        "daphne.ws_protocol:WebSocketProtocol#client_addr",
        "autobahn.websocket.protocol:WebSocketServerFactory#maskServerFrames",
        "autobahn.websocket.protocol:WebSocketServerFactory#autoFragmentSize",
        "autobahn.websocket.protocol:WebSocketServerFactory#logFrames",
        "autobahn.websocket.protocol:WebSocketServerFactory#logOctets",
        "autobahn.websocket.protocol:WebSocketServerFactory#maxMessagePayloadSize",
        "autobahn.websocket.protocol:TrafficStats#outgoingWebSocketMessages",
        "autobahn.websocket.protocol:TrafficStats#outgoingWebSocketFrames",
        "autobahn.websocket.protocol:TrafficStats#outgoingOctetsAppLevel",
        "autobahn.websocket.protocol:TrafficStats#outgoingOctetsWebSocketLevel",
        "autobahn.websocket.protocol:TrafficStats#outgoingOctetsWireLevel",
    ),
)

BODY_LIMITS = Patch(
    name="body_limits",
    requires={"daphne": frozenset({"4.2.3"}), "Twisted": frozenset({"26.10.0"})},
    works_around="https://github.com/django/daphne/issues/483",
    delete_when="daphne refuses a request body over a limit before reading it",
    targets=(
        "daphne.http_protocol:WebRequest.gotLength",
        "daphne.http_protocol:WebRequest.handleContentChunk",
        "daphne.http_protocol:WebRequest.requestReceived",
        "twisted.web.http:Request.gotLength",
        "twisted.web.http:Request.handleContentChunk",
        "twisted.web.http:Request.requestReceived",
        "twisted.web.http:HTTPChannel.dataReceived",
    ),
    attributes=(
        "twisted.web.http:HTTPChannel#_command",
        "twisted.web.http:HTTPChannel#_path",
        "twisted.web.http:HTTPChannel#_networkProducer",
        "daphne.http_protocol:WebRequest#server",
    ),
)

FREE_CLOSED_CONNECTIONS = Patch(
    name="free_closed_connections",
    requires={
        "daphne": frozenset({"4.2.3"}),
        "autobahn": frozenset({"26.10.2"}),
        "Twisted": frozenset({"26.10.0"}),
    },
    works_around=(
        "no upstream issue filed: daphne forgets a closed websocket connection in "
        "Server.application_checker, but its request, channel and protocol stay in reference "
        "cycles (the upgraded request and its channel hold each other, the protocol is held by "
        "its own fired Deferreds) that only the collector's full passes free"
    ),
    delete_when="a closed daphne websocket connection is freed by reference counting alone",
    targets=("daphne.server:Server.application_checker",),
    attributes=(
        "daphne.server:Server#connections",
        "daphne.ws_protocol:WebSocketProtocol#is_open",
        "daphne.ws_protocol:WebSocketProtocol#is_closed",
        "daphne.ws_protocol:WebSocketProtocol#application_deferred",
        "daphne.http_protocol:WebRequest#channel",
        "daphne.http_protocol:WebRequest#transport",
        "twisted.web.http:HTTPChannel#requests",
    ),
)

LINEAR_POOL = Patch(
    name="linear_pool",
    requires={"httpcore": frozenset({"1.0.9"}), "httpx": frozenset({"0.28.1"})},
    works_around=(
        "https://github.com/encode/httpcore/pull/1000 (keep-alive counting); "
        "https://github.com/encode/httpcore/issues/1093 (a connection stranded by a cancelled "
        "request)"
    ),
    delete_when=(
        "a released httpcore counts only idle connections against the keep-alive limit and "
        "closes the connection a cancelled request leaves"
    ),
    targets=(
        "httpcore:AsyncConnectionPool._assign_requests_to_connections",
        "httpcore:AsyncConnectionPool.create_connection",
        "httpcore._async.connection_pool:AsyncPoolRequest.assign_to_connection",
    ),
    attributes=(
        "httpx:AsyncHTTPTransport#_pool",
        "httpcore:AsyncConnectionPool#_requests",
        "httpcore:AsyncConnectionPool#_connections",
        "httpcore:AsyncConnectionPool#_http2",
        "httpcore:AsyncConnectionPool#_max_connections",
        "httpcore:AsyncConnectionPool#_max_keepalive_connections",
        "httpcore._async.connection_pool:AsyncPoolRequest#connection",
        "httpcore._async.connection_pool:AsyncPoolRequest#request",
    ),
)

ASYNCIO_BACKEND = Patch(
    name="asyncio_backend",
    requires={"httpcore": frozenset({"1.0.9"}), "httpx": frozenset({"0.28.1"})},
    works_around=(
        "https://github.com/encode/httpx/issues/3215 (and "
        "https://github.com/encode/httpcore/pull/930, closed as wontfix)"
    ),
    delete_when=(
        "httpx's transport takes a network backend (pass chat/upstream/netio.py's there), or "
        "httpcore's own backend costs no more per request"
    ),
    attributes=(
        "httpx:AsyncHTTPTransport#_pool",
        "httpcore:AsyncConnectionPool#_network_backend",
    ),
)

DAPHNE_WRITE_BUFFER = Patch(
    name="daphne_write_buffer",
    requires={"daphne": frozenset({"4.2.3"}), "Twisted": frozenset({"26.10.0"})},
    works_around=(
        "no upstream issue filed: ASGI's send does not tell an application how many bytes its "
        "connection holds unsent, and daphne keeps them in the Twisted transport's buffers"
    ),
    delete_when="the ASGI server tells the application what a connection holds unsent",
    targets=(
        "daphne.server:Server.handle_reply",
        "twisted.internet.tcp:Server.dataBuffer",
        "twisted.internet.tcp:Server.offset",
    ),
    attributes=("twisted.internet.tcp:Server#_tempDataLen",),
)

UVICORN_WRITE_BUFFER = Patch(
    name="uvicorn_write_buffer",
    requires={"uvicorn": frozenset({"0.54.0"})},
    works_around=(
        "no upstream issue filed: ASGI's send does not tell an application how many bytes its "
        "connection holds unsent, and uvicorn keeps them in its websocket protocol's asyncio "
        "transport"
    ),
    delete_when="the ASGI server tells the application what a connection holds unsent",
    # The websocket protocol uvicorn's `--ws auto` picks with websockets installed; the ASGI
    # send is its method.
    targets=("uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol.send",),
    attributes=(
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol#transport",
    ),
)

PATCHES: dict[str, Patch] = {
    patch.name: patch
    for patch in (
        EAGER_WRITES,
        LAZY_FRAME_LOGS,
        DIRECT_TEXT_FRAMES,
        BODY_LIMITS,
        FREE_CLOSED_CONNECTIONS,
        LINEAR_POOL,
        ASYNCIO_BACKEND,
        DAPHNE_WRITE_BUFFER,
        UVICORN_WRITE_BUFFER,
    )
}

# The patches install() has put in force in this process.
_installed: set[str] = set()
# Per patch name: whether the installed versions are the supported ones (found once a process).
_verdicts: dict[str, bool] = {}
# Names in RUNTIME_PATCHES_OFF already logged (switched off, or no such patch).
_told: set[str] = set()


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def supported(patch: Patch) -> bool:
    """Whether every distribution the patch requires is installed at a version it supports.
    When one is not, logs one warning per patch per process, and the patch must not run."""
    verdict = _verdicts.get(patch.name)
    if verdict is None:
        installed = {name: installed_version(name) for name in patch.requires}
        verdict = all(installed[name] in versions for name, versions in patch.requires.items())
        if not verdict:
            logger.warning(
                "runtime patch %s is not applied: it supports %s, and %s is installed; the "
                "library's own code runs instead (chutesweb/runtime/__init__.py)",
                patch.name,
                ", ".join(
                    f"{name} {' or '.join(sorted(versions))}"
                    for name, versions in patch.requires.items()
                ),
                ", ".join(f"{name} {version or '(none)'}" for name, version in installed.items()),
            )
        _verdicts[patch.name] = verdict
    return verdict


def switched_off() -> frozenset[str]:
    """The patch names RUNTIME_PATCHES_OFF lists (comma-separated), read on every call."""
    names = frozenset(
        name.strip() for name in os.environ.get("RUNTIME_PATCHES_OFF", "").split(",")
    ) - {""}
    for name in sorted(names - _told):
        _told.add(name)
        if name in PATCHES:
            logger.info("runtime patch %s is switched off (RUNTIME_PATCHES_OFF)", name)
        else:
            logger.warning(
                "RUNTIME_PATCHES_OFF names %r, which is no runtime patch (there are: %s)",
                name,
                ", ".join(PATCHES),
            )
    return names


def enabled(patch: Patch) -> bool:
    """Whether the patch may run: not switched off, and on a version it supports."""
    return patch.name not in switched_off() and supported(patch)


def in_force() -> frozenset[str]:
    """The patches install() has put in force in this process."""
    return frozenset(_installed)


def install(*, body_limits: bool = True) -> set[str]:
    """Apply the server's patches, once each, if this process runs on Twisted (daphne), and only
    those on the versions they support; returns the set in force. Under uvicorn this does
    nothing. (The upstream client's patches are applied to each of its transports,
    httpcore_pool.py; the write buffer probes to each socket, socket_buffers.py.)"""
    if "twisted.internet.reactor" not in sys.modules:
        return set()
    if body_limits and "body_limits" not in _installed and enabled(BODY_LIMITS):
        from . import daphne_bodies

        if daphne_bodies.apply():
            _installed.add("body_limits")
    if "eager_writes" not in _installed and enabled(EAGER_WRITES):
        from . import twisted_writes

        twisted_writes.apply()
        _installed.add("eager_writes")
    if "lazy_frame_logs" not in _installed and enabled(LAZY_FRAME_LOGS):
        from . import autobahn_logs

        autobahn_logs.apply()
        _installed.add("lazy_frame_logs")
    if "free_closed_connections" not in _installed and enabled(FREE_CLOSED_CONNECTIONS):
        from . import daphne_connections

        daphne_connections.apply()
        _installed.add("free_closed_connections")
    if enabled(DIRECT_TEXT_FRAMES):
        _installed.add("direct_text_frames")
    else:
        _installed.discard("direct_text_frames")
    return set(_installed)
