from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from . import errors, protocol
from .actions import catalogue_sync
from .actions.catalogue import save_catalogue_entry, set_models_enabled
from .billing import budgets, usage
from .models import (
    Charge,
    ChatModel,
    Conversation,
    Message,
    Preset,
    PriceChange,
    Profile,
    ShareLink,
    UsageReport,
)
from .upstream.catalogue import fetch_models
from .upstream.errors import UpstreamError

if TYPE_CHECKING:
    from django.contrib.auth.models import User as Account

SYNC_SESSION_KEY = "catalogue_sync_preview"
User = get_user_model()


def _staff(request: HttpRequest) -> Account:
    # The admin lets in only active staff accounts (AdminSite.admin_view), never AnonymousUser.
    return cast("Account", request.user)


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

    change_list_template = "admin/chat/chatmodel/change_list.html"

    def save_model(
        self, request: HttpRequest, obj: ChatModel, form: ModelForm, change: bool
    ) -> None:
        # Used by both the change form and the editable changelist, so every edit is recorded.
        save_catalogue_entry(obj, user=_staff(request), source="admin")

    def get_urls(self) -> list[URLPattern]:
        sync_url = path(
            "sync/", self.admin_site.admin_view(self.sync_view), name="chat_chatmodel_sync"
        )
        return [sync_url, *super().get_urls()]

    def sync_view(self, request: HttpRequest) -> HttpResponse:
        """Preview what Chutes' catalogue would change; apply exactly that on confirmation."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        changelist = reverse("admin:chat_chatmodel_changelist")
        if request.method == "POST":
            saved = request.session.pop(SYNC_SESSION_KEY, None)
            if saved is None:
                self.message_user(request, "Nothing to apply: preview again.", messages.WARNING)
                return HttpResponseRedirect(reverse("admin:chat_chatmodel_sync"))
            counts = catalogue_sync.apply(catalogue_sync.from_session(saved), user=_staff(request))
            self.message_user(
                request,
                f"Catalogue synced: {counts['new']} new (disabled until you enable them), "
                f"{counts['changed']} changed, {counts['gone']} disabled as gone.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(changelist)
        error = ""
        changes: list[catalogue_sync.Change] = []
        try:
            catalogue = async_to_sync(fetch_models)()
        except UpstreamError as exc:
            error = exc.message
        else:
            changes = catalogue_sync.preview(catalogue, settings.PRICE_MARKUP_PERCENT)
            request.session[SYNC_SESSION_KEY] = catalogue_sync.to_session(changes)
        context = {
            **self.admin_site.each_context(request),
            "title": "Sync the catalogue from Chutes",
            "opts": self.model._meta,
            "changes": changes,
            "error": error,
            "markup": settings.PRICE_MARKUP_PERCENT,
            "changelist": changelist,
        }
        return TemplateResponse(request, "admin/chat/chatmodel/sync.html", context)

    @admin.action(description="Enable selected models")
    def enable_models(self, request: HttpRequest, queryset: QuerySet[ChatModel]) -> None:
        changed, refused = set_models_enabled(queryset, True, user=_staff(request))
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
        changed, _ = set_models_enabled(queryset, False, user=_staff(request))
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


# Money: per-user limits, billed calls, the usage dashboard and the catalogue sync. ------------


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    fields = ("budget_mode", "monthly_limit", "default_model")
    verbose_name = "budget and preferences"


class UserWithBudgetAdmin(UserAdmin):
    inlines = (*UserAdmin.inlines, ProfileInline)


admin.site.unregister(User)
admin.site.register(User, UserWithBudgetAdmin)


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "budget_mode", "monthly_limit", "spent_this_month", "default_model")
    list_editable = ("budget_mode", "monthly_limit")
    list_filter = ("budget_mode",)
    search_fields = ("user__username", "user__email")
    fields = ("user", "budget_mode", "monthly_limit", "default_model")
    readonly_fields = ("user",)
    list_select_related = ("user", "default_model")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # every user gets one when created

    @admin.display(description="spent this month (USD)")
    def spent_this_month(self, profile: Profile) -> str:
        current = budgets.standing(profile.user)
        text = str(current.committed.normalize()) if current.committed else "0"
        share = current.share_used
        if share is not None and share >= NEAR_LIMIT:
            return f"{text} ({share:.0%} of limit)"
        return text


@admin.register(Charge)
class ChargeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "created_at",
        "user",
        "kind",
        "model_id",
        "state",
        "prompt_tokens",
        "completion_tokens",
        "estimated",
        "cost",
        "lava_cost",
    )
    list_filter = ("kind", "state", "estimated", "model_id")
    search_fields = ("user__username", "lava_request_id", "model_id")
    date_hierarchy = "created_at"
    list_select_related = ("user",)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_staff


NEAR_LIMIT = Decimal("0.8")


@admin.register(UsageReport)
class UsageDashboardAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Spend per user, model and day over a period; limits; what could not be priced."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_staff

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        period = usage.day_period(request.GET.get("start"), request.GET.get("end"))
        charges = usage.charges_in(period)
        users = usage.by_user(charges)
        for row in users:
            row["limit"] = budgets.limit_for(User(pk=row["user_id"]))
        tolerance = settings.RECONCILE_TOLERANCE_USD
        mismatches = [
            c
            for c in charges.filter(lava_cost__isnull=False, cost__isnull=False).select_related(
                "user"
            )
            # Both are set (the filter asks for it); the checks only tell the type checker.
            if c.lava_cost is not None
            and c.cost is not None
            and abs(c.lava_cost - c.cost) > tolerance
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage dashboard",
            "opts": self.model._meta,
            "period": period,
            "start": timezone.localtime(period.start).date().isoformat(),
            "end": (timezone.localtime(period.end) - timedelta(days=1)).date().isoformat(),
            "total": usage.total(charges),
            "calls": usage.billed(charges).count(),
            "users": users[:20],
            "models": usage.by_model(charges),
            "chart": usage.bar_chart(usage.by_day(charges, period)),
            "near_limit": self._near_limit(),
            "unpriced": charges.filter(state=Charge.State.SETTLED, cost__isnull=True)
            .select_related("user")
            .order_by("-created_at")[:100],
            "mismatches": mismatches[:100],
            "tolerance": tolerance,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/chat/usage_dashboard.html", context)

    def _near_limit(self) -> list[dict[str, Any]]:
        """Users at 80% or more of their monthly limit this month (committed spend)."""
        start = budgets.month_start()
        spenders = (
            Charge.objects.filter(created_at__gte=start).values_list("user", flat=True).distinct()
        )
        rows = []
        for user in User.objects.filter(pk__in=spenders).select_related("profile"):
            current = budgets.standing(user, start)
            share = current.share_used
            if share is not None and share >= NEAR_LIMIT:
                rows.append({"user": user, "standing": current, "share": share, "over": share >= 1})
        return sorted(rows, key=lambda row: -row["share"])


# Presets and share links -----------------------------------------------------------------------


class PresetForm(ModelForm):
    class Meta:
        model = Preset
        fields = ("name", "owner", "model", "system_prompt", "params")

    def clean_params(self) -> dict[str, Any]:
        """The one check every way params enter the database goes through (a preset's params
        become a conversation's)."""
        raw = self.cleaned_data.get("params")
        try:
            params = protocol.parse_params(raw)
        except errors.Refused as exc:
            raise ValidationError(exc.message) from None
        if params.system_prompt is not None:
            raise ValidationError("Set the system prompt in its own field.")
        return params.as_json()


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin):
    """Admins publish presets for everyone by leaving the owner empty."""

    form = PresetForm

    list_display = ("name", "model", "owner", "published_for_everyone", "updated_at")
    list_filter = (("owner", admin.EmptyFieldListFilter), "model")
    search_fields = ("name", "system_prompt", "owner__username")
    raw_id_fields = ("owner",)
    fields = ("name", "owner", "model", "system_prompt", "params")

    @admin.display(boolean=True, description="published")
    def published_for_everyone(self, preset: Preset) -> bool:
        return preset.published


@admin.register(ShareLink)
class ShareLinkAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("token", "conversation", "owner", "created_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("token", "owner__username")
    actions = ("revoke",)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Needed for the revoke action; the fields themselves stay read-only.
        return request.user.is_active and request.user.is_superuser

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in ShareLink._meta.fields]

    @admin.action(description="Revoke the selected links")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ShareLink]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} link(s).", messages.SUCCESS)
