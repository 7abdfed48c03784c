from django.urls import path

from . import views
from .api import conversations, images, me, presets, shares, transfer, versions

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("usage/", views.usage_page, name="usage"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
    path("api/models", views.api_models, name="api_models"),
    path("api/me", me.me, name="api_me"),
    path("api/conversations", conversations.conversations, name="api_conversations"),
    path("api/conversations/<int:pk>", conversations.conversation, name="api_conversation"),
    path(
        "api/conversations/<int:pk>/export.<str:fmt>",
        transfer.export_conversation,
        name="api_export",
    ),
    path("api/conversations/<int:pk>/shares", shares.shares, name="api_shares"),
    path("api/messages/<int:pk>/show", versions.show_version, name="api_show_version"),
    path("api/export", transfer.export_all, name="api_export_all"),
    path("api/import", transfer.import_conversations, name="api_import"),
    path("api/images", images.upload_image, name="api_images"),
    path("api/images/<int:pk>", images.image, name="api_image"),
    path("api/shares/<str:token>", shares.revoke_share, name="api_share"),
    path("api/presets", presets.presets, name="api_presets"),
    path("api/presets/<int:pk>", presets.preset, name="api_preset"),
    path("s/<str:token>", shares.shared_page, name="shared"),
]
