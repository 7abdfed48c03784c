"""ASGI entry point: HTTP goes to Django, websockets to the chat consumer.

Websockets must come from this site's own pages (chat/realtime/origins.py: a foreign or missing
Origin, or one of another scheme or port, is refused at the handshake) and carry the Django
session user.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chutesweb.settings")
# Django must be set up before the consumers (and the models they import) are loaded.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from chat.bodylimit import BodyLimit  # noqa: E402
from chat.realtime.engine import get_manager  # noqa: E402
from chat.realtime.lifespan import lifespan  # noqa: E402
from chat.realtime.origins import SameOriginValidator  # noqa: E402
from chat.realtime.routing import websocket_urlpatterns  # noqa: E402
from chutesweb import runtime  # noqa: E402
from chutesweb.runtime import collector, server_lifecycle  # noqa: E402

# Daphne imports this module with its reactor running; under uvicorn this does nothing. Each
# patch is applied only on the library versions it was written for, and not when
# RUNTIME_PATCHES_OFF names it (chutesweb/runtime).
runtime.install()
# Saving, the reaper and the settling of replies a crash left streaming start with the server.
server_lifecycle.start_with_server(lambda: get_manager().ensure_started())

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

# Last, once everything the server runs on is loaded: the collector's full passes spaced out and
# what is loaded frozen out of them (chutesweb/runtime/collector.py).
collector.tune(full_pass_every=settings.GC_FULL_PASS_EVERY, freeze=settings.GC_FREEZE)
