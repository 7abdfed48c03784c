"""Lazy frame logs: autobahn's per-frame debug arguments are built only when a line is logged.

autobahn's `sendData` logs every frame at debug level, and builds the message's arguments
first, debug enabled or not: three terminal-colour strings through `click.style` per frame. Its
protocol module gets versions of those helpers that only build the string when a log line is
actually written, so debug logs read the same. The same goes for the settings dump it formats
with `pprint` for every new connection (0.6 ms a connection under cProfile).
"""

from __future__ import annotations

from typing import Any


class _Deferred:
    """A log argument computed only when the log line is formatted."""

    __slots__ = ("args", "function")

    def __init__(self, function: Any, *args: Any) -> None:
        self.function = function
        self.args = args

    def __format__(self, spec: str) -> str:
        return format(self.function(*self.args), spec)

    def __str__(self) -> str:
        return str(self.function(*self.args))


def apply() -> None:
    """Replace the helpers in autobahn's protocol module (chutesweb.runtime.install applies it
    once, when supported)."""
    from autobahn.websocket import protocol

    hltype, hlval, pformat = protocol.hltype, protocol.hlval, protocol.pformat
    protocol.hltype = lambda obj: _Deferred(hltype, obj)
    protocol.hlval = lambda *args, **kwargs: _Deferred(lambda: hlval(*args, **kwargs))
    # Used for log arguments only, but for `Timings.__str__`, which must return a string.
    protocol.pformat = lambda obj: _Deferred(pformat, obj)  # type: ignore[assignment, misc]  # patches autobahn
    protocol.Timings.__str__ = lambda self: pformat(self._timings)  # type: ignore[method-assign]  # patches autobahn
