from django.urls import path

from . import api, views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("usage/", views.usage_page, name="usage"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
    path("api/models", views.api_models, name="api_models"),
    path("api/me", api.me, name="api_me"),
    path("api/conversations", api.conversations, name="api_conversations"),
    path("api/conversations/<int:pk>", api.conversation, name="api_conversation"),
]
