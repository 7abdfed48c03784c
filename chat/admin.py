from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from .models import ChatModel, Conversation, Message, PriceChange
from .services import save_catalogue_entry, set_models_enabled

admin.site.site_header = "Chutes Chat administration"
admin.site.site_title = "Chutes Chat admin"


class ReadOnlyAdminMixin:
    """Staff can look (for support) but not change what users wrote or what was billed."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PriceChangeInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = PriceChange
    extra = 0
    can_delete = False
    fields = (
        "changed_at",
        "changed_by",
        "source",
        "old_input_price",
        "new_input_price",
        "old_output_price",
        "new_output_price",
        "old_enabled",
        "new_enabled",
        "note",
    )
    readonly_fields = fields
    ordering = ("-changed_at", "-id")


@admin.register(ChatModel)
class ChatModelAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "model_id",
        "enabled",
        "input_price",
        "output_price",
        "context_length",
        "reasoning",
        "vision",
        "sort_order",
    )
    list_editable = ("enabled", "input_price", "output_price", "sort_order")
    list_display_links = ("name",)
    list_filter = ("enabled", "reasoning", "vision")
    search_fields = ("name", "model_id", "description")
    ordering = ("sort_order", "name")
    actions = ("enable_models", "disable_models")
    inlines = (PriceChangeInline,)
    fieldsets = (
        (None, {"fields": ("model_id", "name", "description", "enabled", "sort_order")}),
        ("Price (USD per 1M tokens)", {"fields": ("input_price", "output_price")}),
        ("Limits and capabilities", {"fields": ("context_length", "max_output_tokens")}),
        (None, {"fields": ("reasoning", "vision")}),
    )

    def save_model(
        self, request: HttpRequest, obj: ChatModel, form: ModelForm, change: bool
    ) -> None:
        # Used by both the change form and the editable changelist, so every edit is recorded.
        save_catalogue_entry(obj, user=request.user, source="admin")

    @admin.action(description="Enable selected models")
    def enable_models(self, request: HttpRequest, queryset: QuerySet[ChatModel]) -> None:
        changed, refused = set_models_enabled(queryset, True, user=request.user)
        if changed:
            self.message_user(request, f"Enabled {len(changed)} model(s).", messages.SUCCESS)
        if refused:
            names = ", ".join(str(m) for m in refused)
            self.message_user(
                request,
                f"Not enabled (set both prices first; 0 is allowed): {names}.",
                messages.ERROR,
            )
        if not changed and not refused:
            self.message_user(request, "The selected models were already enabled.")

    @admin.action(description="Disable selected models")
    def disable_models(self, request: HttpRequest, queryset: QuerySet[ChatModel]) -> None:
        changed, _ = set_models_enabled(queryset, False, user=request.user)
        self.message_user(request, f"Disabled {len(changed)} model(s).", messages.SUCCESS)


@admin.register(PriceChange)
class PriceChangeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "changed_at",
        "chat_model",
        "changed_by",
        "source",
        "old_input_price",
        "new_input_price",
        "old_output_price",
        "new_output_price",
        "old_enabled",
        "new_enabled",
    )
    list_filter = ("source", "chat_model")
    date_hierarchy = "changed_at"


class MessageInline(ReadOnlyAdminMixin, admin.StackedInline):
    model = Message
    extra = 0
    fields = (
        "role",
        "status",
        "model",
        "content",
        "reasoning",
        "prompt_tokens",
        "completion_tokens",
        "usage_estimated",
        "cost",
        "error_code",
        "error_message",
        "lava_request_id",
        "created_at",
    )
    readonly_fields = fields


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("__str__", "owner", "model", "created_at", "updated_at")
    list_filter = ("model",)
    search_fields = ("title", "owner__username")
    raw_id_fields = ("owner",)
    inlines = (MessageInline,)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_staff


@admin.register(Message)
class MessageAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "role",
        "status",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "usage_estimated",
        "created_at",
    )
    list_filter = ("status", "role", "usage_estimated", "model")
    search_fields = ("content", "user__username", "lava_request_id")
    raw_id_fields = ("conversation", "user")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_staff
