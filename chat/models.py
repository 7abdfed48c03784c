"""The chat domain: the model catalogue and its price history, conversations and messages."""

from __future__ import annotations

from decimal import Decimal
from typing import TypedDict

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from .fields import MoneyField


# Prices are USD per 1M tokens. Chutes prices need six decimals (0.027216); eight leaves room
# for a markup applied on top without rounding. Fourteen digits in all round-trip exactly even
# where the database keeps decimals as floats (SQLite); sums of money use MoneyField instead.
class _Digits(TypedDict):
    max_digits: int
    decimal_places: int


PRICE_DIGITS: _Digits = {"max_digits": 14, "decimal_places": 8}

model_id_validator = RegexValidator(
    regex=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._:-]*)?$",
    message=(
        "Enter a Chutes model id such as 'deepseek-ai/DeepSeek-V3-0324': an organisation and a "
        "name separated by one '/', using letters, digits, '.', '_', '-' (and ':' in the name)."
    ),
)


class ChatModel(models.Model):
    """A model users can pick, with the price charged for it."""

    model_id = models.CharField(
        "Chutes model id", max_length=200, unique=True, validators=[model_id_validator]
    )
    name = models.CharField("display name", max_length=200)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=False)
    input_price = models.DecimalField(
        "input price (USD / 1M tokens)",
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        **PRICE_DIGITS,
    )
    output_price = models.DecimalField(
        "output price (USD / 1M tokens)",
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        **PRICE_DIGITS,
    )
    context_length = models.PositiveIntegerField(default=32768)
    max_output_tokens = models.PositiveIntegerField(default=8192)
    vision = models.BooleanField("accepts images", default=False)
    reasoning = models.BooleanField("thinks before answering", default=False)
    sort_order = models.IntegerField(default=100)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sort_order", "name"]
        verbose_name = "model"
        constraints = [
            models.CheckConstraint(
                condition=Q(input_price__isnull=True) | Q(input_price__gte=0),
                name="chatmodel_input_price_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(output_price__isnull=True) | Q(output_price__gte=0),
                name="chatmodel_output_price_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(enabled=False)
                | (Q(input_price__isnull=False) & Q(output_price__isnull=False)),
                name="chatmodel_enabled_needs_prices",
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.model_id

    def clean(self) -> None:
        super().clean()
        if self.enabled:
            missing = [
                label
                for label, value in (("input", self.input_price), ("output", self.output_price))
                if value is None
            ]
            if missing:
                raise ValidationError(
                    {
                        "enabled": (
                            f"Set the {' and '.join(missing)} price before enabling this model "
                            "(0 is allowed for a free model)."
                        )
                    }
                )
        if self.context_length and self.max_output_tokens > self.context_length:
            raise ValidationError(
                {"max_output_tokens": "The maximum output cannot exceed the context length."}
            )

    @property
    def priced(self) -> bool:
        return self.input_price is not None and self.output_price is not None

    @property
    def capabilities(self) -> list[str]:
        return [name for name in ("reasoning", "vision") if getattr(self, name)]


class Profile(models.Model):
    """Per-user preferences and the admin's budget decision for the user."""

    class BudgetMode(models.TextChoices):
        DEFAULT = "default", "site default (MONTHLY_BUDGET_USD)"
        CUSTOM = "custom", "custom limit"
        UNLIMITED = "unlimited", "no limit"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="profile"
    )
    default_model = models.ForeignKey(
        "ChatModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    budget_mode = models.CharField(
        max_length=10, choices=BudgetMode.choices, default=BudgetMode.DEFAULT
    )
    monthly_limit = models.DecimalField(
        "monthly limit (USD)",
        null=True,
        blank=True,
        max_digits=12,
        decimal_places=2,
        validators=[MinValueValidator(Decimal(0))],
    )

    def __str__(self) -> str:
        return f"profile of {self.user}"

    def clean(self) -> None:
        super().clean()
        if self.budget_mode == self.BudgetMode.CUSTOM and self.monthly_limit is None:
            raise ValidationError({"monthly_limit": "Set the limit for a custom budget."})


class PriceChange(models.Model):
    """One change of a model's prices or availability: who, when, old and new values."""

    class Source(models.TextChoices):
        SEED = "seed", "initial catalogue"
        ADMIN = "admin", "admin edit"
        ACTION = "action", "admin bulk action"
        SYNC = "sync", "catalogue sync"

    chat_model = models.ForeignKey(ChatModel, on_delete=models.CASCADE, related_name="history")
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.ADMIN)
    old_input_price = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    new_input_price = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    old_output_price = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    new_output_price = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    old_enabled = models.BooleanField(null=True)
    new_enabled = models.BooleanField(null=True)
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        verbose_name = "price and availability change"

    def __str__(self) -> str:
        return f"{self.chat_model} at {self.changed_at:%Y-%m-%d %H:%M}"


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    title_is_custom = models.BooleanField(default=False)
    model = models.ForeignKey(
        ChatModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    system_prompt = models.TextField(blank=True)
    # Generation parameters: temperature, max_tokens, top_p. Validated by chat.protocol.
    params = models.JSONField(default=dict, blank=True)
    # Whether any question carries images; spares looking for them in every other conversation.
    has_images = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    # Denormalised owner: idempotency keys and spend queries are per user.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    # The client's idempotency key for the send or regenerate that created this reply.
    request_id = models.CharField(max_length=64, blank=True)
    # Conversations are trees: a reply's parent is the question it answers, a question's parent
    # the reply it follows. Regenerating or editing adds a sibling and deactivates the old
    # branch instead of deleting it (it was billed, and it can be shown again).
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    active = models.BooleanField(default=True)

    model = models.ForeignKey(
        ChatModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    params = models.JSONField(default=dict, blank=True)
    # The prices in force when the reply started; the cost is always computed from these.
    input_price = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    output_price = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False)
    cost = MoneyField(null=True, blank=True)
    finish_reason = models.CharField(max_length=30, blank=True)
    error_code = models.CharField(max_length=40, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    lava_request_id = models.CharField(max_length=100, blank=True, db_index=True)
    chutes_invocation_id = models.CharField(max_length=100, blank=True)

    # Streaming progress: the sequence number of the last saved delta and when it was saved.
    seq = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The server process that runs the reply (WORKER_NAME): on its restart, its replies still
    # `streaming` are orphans and are settled at once.
    worker = models.CharField(max_length=100, blank=True)
    reasoning_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "active", "created_at"]),
            models.Index(fields=["status", "heartbeat_at"]),
            models.Index(fields=["user", "created_at"]),
            # A user's replies still streaming, counted on every send.
            models.Index(fields=["user", "status"]),
            # The replay lookup by request id: SQLite cannot use the partial unique index below
            # with a bound parameter.
            models.Index(fields=["user", "request_id"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "request_id"],
                condition=~Q(request_id=""),
                name="message_request_id_unique_per_user",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role} message {self.pk}"


class Attachment(models.Model):
    """An image a user uploaded for a vision model; sent upstream as a data URI."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attachments"
    )
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="attachments"
    )
    content_type = models.CharField(max_length=40)
    data = models.BinaryField()
    size = models.PositiveIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.content_type} {self.width}x{self.height} ({self.pk})"


class ShareLink(models.Model):
    """A read-only snapshot of a conversation that anyone with the link can view."""

    token = models.CharField(max_length=40, unique=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="shares")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    snapshot = models.JSONField()
    include_reasoning = models.BooleanField(default=False)
    include_costs = models.BooleanField(default=False)
    include_system_prompt = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"share of {self.conversation_id} ({'revoked' if self.revoked_at else 'live'})"


class Preset(models.Model):
    """A named model, system prompt and parameters to start chats from. Presets without an
    owner are published by an admin for everyone."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="presets",
        help_text="Leave empty to publish the preset for every user.",
    )
    name = models.CharField(max_length=80)
    model = models.ForeignKey(
        ChatModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    system_prompt = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def published(self) -> bool:
        return self.owner_id is None


class Charge(models.Model):
    """One upstream call billed to a user: a reply, a regeneration or a title.

    Created as a reservation of the worst case when the call is accepted and settled to the real
    cost when it ends, so concurrent calls can never spend past a user's limit together. Kept
    when the conversation is deleted: the money was spent.
    """

    class Kind(models.TextChoices):
        REPLY = "reply"
        TITLE = "title"

    class State(models.TextChoices):
        RESERVED = "reserved"
        SETTLED = "settled"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="charges"
    )
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="charges"
    )
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="charges"
    )
    chat_model = models.ForeignKey(
        ChatModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    model_id = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.REPLY)
    state = models.CharField(max_length=10, choices=State.choices, default=State.RESERVED)
    input_price = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    output_price = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    reserved = MoneyField(default=Decimal(0))
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    estimated = models.BooleanField(default=False)
    # What the user is billed: the usage priced, at most the reservation. None when the usage
    # could not be priced; such rows are listed for the admin.
    cost = MoneyField(null=True, blank=True)
    # The usage priced without that bound: above `cost` when the provider produced more than
    # the reply was allowed (the difference is ours to bear, and reconciliation shows it).
    usage_cost = MoneyField(null=True, blank=True)
    lava_request_id = models.CharField(max_length=100, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    # What Lava says it billed for this request (reconciliation), and when we asked.
    lava_cost = MoneyField(null=True, blank=True)
    reconciled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "created_at"]),
            models.Index(fields=["created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.kind} charge {self.pk} for {self.user}"


class UsageReport(Charge):
    """The admin's usage dashboard (an admin page over charges, no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "usage dashboard"
        verbose_name_plural = "usage dashboard"
