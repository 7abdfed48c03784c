"""The garbage collector's settings for a server process.

Public `gc` API only, so no version gate: it is here because, like the patches, it tunes the
runtime under the app rather than the app. Called last by chutesweb/asgi.py, once everything
the server runs on is loaded.
"""

from __future__ import annotations

import gc


def tune(*, full_pass_every: int, freeze: bool) -> None:
    """Space out the collector's full passes, and freeze what is loaded (GC_FULL_PASS_EVERY,
    GC_FREEZE).

    A full pass of the garbage collector walks every live object and pauses every stream while
    it does: about 20 ms at 200 streams on this kind of machine. Python runs one after every 10
    middle-generation passes, every few seconds under load, and here it finds nothing to free:
    the app and the runtime patches (daphne_connections.py) cut the reference cycles of
    finished replies and closed connections. So full passes run ten times less often
    (GC_FULL_PASS_EVERY, docs/benchmarks.md).

    Django, the app and all they imported live as long as the process. Left in the collector's
    oldest generation, they are walked by every full collection: a pause of 40 to 85 ms on this
    kind of machine, which every running stream felt (docs/benchmarks.md). Frozen, a full
    collection walks only what was created since. (No collection first: it would leave the
    collector counting the frozen objects as old ones, and wait for a quarter as many new ones
    before its next full pass, which then pauses as long.)
    """
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, full_pass_every)
    if freeze:
        gc.freeze()
