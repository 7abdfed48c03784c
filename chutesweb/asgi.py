"""ASGI entry point: HTTP goes to Django, websockets to the chat consumer.

Websockets must come from this site's own pages (chat/origins.py: a foreign or missing Origin,
or one of another scheme or port, is refused at the handshake) and carry the Django session user.
"""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chutesweb.settings")
# Django must be set up before the consumers (and the models they import) are loaded.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from chat import daphnetuning  # noqa: E402
from chat.bodylimit import BodyLimit  # noqa: E402
from chat.generation import start_with_server  # noqa: E402
from chat.lifespan import lifespan  # noqa: E402
from chat.origins import SameOriginValidator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

# Daphne imports this module with its reactor running; under uvicorn this does nothing.
daphnetuning.install(
    eager_writes=settings.EAGER_SOCKET_WRITES,
    direct_text_frames=settings.DIRECT_WEBSOCKET_FRAMES,
)
# Saving, the reaper and the settling of replies a crash left streaming start with the server.
start_with_server()

application = ProtocolTypeRouter(
    {
        # Oversized request bodies are refused before they are read (chat/bodylimit.py).
        "http": BodyLimit(django_asgi_app),
        "lifespan": lifespan,
        # channels' stubs: URLRouter takes its own pattern type, and AuthMiddlewareStack returns
        # any ASGI application (ASGI2 classes included) where it returns an ASGI3 middleware.
        "websocket": SameOriginValidator(
            AuthMiddlewareStack(  # type: ignore[arg-type]  # an ASGI3 application
                URLRouter(websocket_urlpatterns)  # type: ignore[arg-type]  # Django's URLPattern
            )
        ),
    }
)

# A full pass of the garbage collector walks every live object and pauses every stream while it
# does: about 20 ms at 200 streams on this kind of machine. Python runs one after every 10
# middle-generation passes, every few seconds under load, and here it finds nothing to free: the
# app and chat/daphnetuning.py cut the reference cycles of finished replies and closed
# connections. So full passes run ten times less often (GC_FULL_PASS_EVERY, docs/benchmarks.md).
_young, _middle, _ = gc.get_threshold()
gc.set_threshold(_young, _middle, settings.GC_FULL_PASS_EVERY)

if settings.GC_FREEZE:
    # Django, the app and all they imported live as long as the process. Left in the
    # collector's oldest generation, they are walked by every full collection: a pause of 40 to
    # 85 ms on this kind of machine, which every running stream felt (docs/benchmarks.md).
    # Frozen, a full collection walks only what was created since. (No collection first: it
    # would leave the collector counting the frozen objects as old ones, and wait for a quarter
    # as many new ones before its next full pass, which then pauses as long.)
    gc.freeze()
