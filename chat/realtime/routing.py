from django.urls import path

from . import consumer

websocket_urlpatterns = [
    # channels routes ASGI applications with Django's path(); django-stubs' takes views only.
    path("ws/chat/", consumer.ChatConsumer.as_asgi()),  # type: ignore[arg-type]  # an ASGI app
]
