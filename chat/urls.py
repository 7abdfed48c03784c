from django.urls import path

from . import api, api_features, views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("usage/", views.usage_page, name="usage"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
    path("api/models", views.api_models, name="api_models"),
    path("api/me", api.me, name="api_me"),
    path("api/conversations", api.conversations, name="api_conversations"),
    path("api/conversations/<int:pk>", api.conversation, name="api_conversation"),
    path(
        "api/conversations/<int:pk>/export.<str:fmt>",
        api_features.export_conversation,
        name="api_export",
    ),
    path("api/conversations/<int:pk>/shares", api_features.shares, name="api_shares"),
    path("api/messages/<int:pk>/show", api_features.show_version, name="api_show_version"),
    path("api/export", api_features.export_all, name="api_export_all"),
    path("api/import", api_features.import_conversations, name="api_import"),
    path("api/images", api_features.upload_image, name="api_images"),
    path("api/images/<int:pk>", api_features.image, name="api_image"),
    path("api/shares/<str:token>", api_features.revoke_share, name="api_share"),
    path("api/presets", api_features.presets, name="api_presets"),
    path("api/presets/<int:pk>", api_features.preset, name="api_preset"),
    path("s/<str:token>", api_features.shared_page, name="shared"),
]
