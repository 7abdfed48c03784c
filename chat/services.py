"""Synchronous, transactional domain functions. Async code calls these through
`database_sync_to_async`, once per logical operation."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from . import errors, protocol, rows
from .attachments import data_uri, image_tokens
from .billing import budgets, prices, settlement
from .errors import Refused
from .models import (
    Attachment,
    Charge,
    ChatModel,
    Conversation,
    Message,
    Preset,
    PriceChange,
    Profile,
    ShareLink,
)
from .protocol import Edit, Params, Regenerate, Send
from .upstream.errors import NOT_CONFIGURED_MESSAGE
from .upstream.settings import config_from_settings

logger = logging.getLogger(__name__)

# Below this many tokens of room a reply is not worth starting.
MIN_REPLY_TOKENS = 256
# Vision models spend at least this much on even a tiny image.
MIN_IMAGE_TOKENS = 64

TRACKED_FIELDS = ("input_price", "output_price", "enabled")


def record_catalogue_change(
    before: ChatModel | None,
    after: ChatModel,
    *,
    user: User | None,
    source: str,
    note: str = "",
) -> PriceChange | None:
    """Write a history row when prices or availability differ between `before` and `after`.

    `before` is None for a model that did not exist yet.
    """
    old = {f: getattr(before, f) if before else None for f in TRACKED_FIELDS}
    new = {f: getattr(after, f) for f in TRACKED_FIELDS}
    if before is not None and old == new:
        return None
    return PriceChange.objects.create(
        chat_model=after,
        changed_by=user if user is not None and user.is_authenticated else None,
        source=source,
        old_input_price=old["input_price"],
        new_input_price=new["input_price"],
        old_output_price=old["output_price"],
        new_output_price=new["output_price"],
        old_enabled=old["enabled"],
        new_enabled=new["enabled"],
        note=note[:300],
    )


def save_catalogue_entry(obj: ChatModel, *, user: User | None, source: str, note: str = "") -> None:
    """Save a catalogue entry and record what changed in its price history."""
    with transaction.atomic():
        before = ChatModel.objects.filter(pk=obj.pk).first() if obj.pk else None
        obj.save()
        record_catalogue_change(before, obj, user=user, source=source, note=note)


def set_models_enabled(
    models: Iterable[ChatModel], enabled: bool, *, user: User | None
) -> tuple[list[ChatModel], list[ChatModel]]:
    """Enable or disable models; returns (changed, refused). A model without both prices is
    refused enabling rather than offered to users at an unknown price."""
    changed: list[ChatModel] = []
    refused: list[ChatModel] = []
    with transaction.atomic():
        for obj in models:
            if obj.enabled == enabled:
                continue
            if enabled and not obj.priced:
                refused.append(obj)
                continue
            obj.enabled = enabled
            save_catalogue_entry(obj, user=user, source=PriceChange.Source.ACTION)
            changed.append(obj)
    return changed, refused


# Conversations, replies and their lifecycle ------------------------------------------------


@dataclass(frozen=True)
class GenerationPlan:
    """Everything a generation needs, decided inside the transaction that accepted it."""

    message_id: int
    conversation_id: int
    user_id: int
    request_id: str
    user_message: dict[str, Any] | None
    model_id: str
    reasoning_model: bool
    input_price: Decimal
    output_price: Decimal
    body: dict[str, Any]
    prompt_estimate: int
    charge_id: int | None
    # The worst case reserved against the user's limit: the most the reply can be billed.
    reserved: Decimal = Decimal(0)
    # The request id had been accepted before: answer the same, start nothing.
    duplicate: bool = False
    # The conversation's first exchange: a title is written when the reply completes.
    wants_title: bool = False


@dataclass(frozen=True)
class InFlight:
    message_id: int
    conversation_id: int
    content: str
    reasoning: str
    seq: int
    status: str
    heartbeat_at: datetime | None


@dataclass(frozen=True)
class Progress:
    """A streaming reply's text to save: what came after the saved text (appended on top of it)
    or, when `whole`, all of it."""

    message_id: int
    # The sequence number this saves up to, and the one the saved text is at now.
    seq: int
    saved_seq: int
    content: str
    reasoning: str
    whole: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a generation ended, written once, with the plan it was accepted with (its prices and
    prompt estimate, so that the final write reads nothing back)."""

    plan: GenerationPlan
    status: str
    content: str
    reasoning: str
    seq: int
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int
    finish_reason: str
    error_code: str
    error_message: str
    lava_request_id: str
    chutes_invocation_id: str
    reasoning_ms: int | None
    # Write the end over the text saved so far (the final text itself could not be stored).
    keep_saved_text: bool = False


def owned_conversation(user: User, conversation_id: int) -> Conversation:
    """The user's conversation, or Refused(not_found) whether or not it exists."""
    conversation = Conversation.objects.filter(pk=conversation_id, owner=user).first()
    if conversation is None:
        raise Refused(errors.NOT_FOUND, "No such conversation.")
    return conversation


def usable_model(model_id: str | None, request_id: str) -> ChatModel:
    if not model_id:
        raise Refused(errors.MODEL_UNAVAILABLE, "Pick a model first.", request_id)
    model = rows.one_by(ChatModel, "model_id", model_id)
    if model is None or not model.enabled:
        raise Refused(
            errors.MODEL_UNAVAILABLE,
            f"The model '{model_id}' is not available. Pick another model.",
            request_id,
        )
    if not model.priced:
        # Never bill at an unknown rate.
        raise Refused(
            errors.MODEL_UNAVAILABLE,
            f"The model '{model_id}' has no price yet. Pick another model.",
            request_id,
        )
    return model


def _lock_user(user: User) -> None:
    """Serialise one user's sends so limits and budgets hold under concurrency.

    SQLite already serialises writers (IMMEDIATE transactions); PostgreSQL needs a row lock.
    """
    if connection.vendor != "sqlite":
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()


@dataclass(frozen=True)
class SenderState:
    """What a send is checked against, read in one statement at its start."""

    replayed: int | None  # a message already stored under this request id
    streaming: int  # the user's replies being written now, up to the limit
    recent: int  # the user's replies started in the last minute, up to the limit


def _sender_state(user: User, request_id: str) -> SenderState:
    # One statement instead of three ORM queries (this runs on every send, under the user's
    # lock); each subquery is answered from its own index: (user, request_id), (user, status),
    # (user, created_at). The counts stop at their limit: past it the answer is the same.
    table = connection.ops.quote_name(Message._meta.db_table)
    since = Message._meta.get_field("created_at").get_db_prep_value(
        timezone.now() - timedelta(minutes=1), connection
    )
    assistant, streaming = Message.Role.ASSISTANT.value, Message.Status.STREAMING.value
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT id FROM {table} WHERE user_id = %s AND request_id = %s LIMIT 1), "  # noqa: S608 - names from our models
            f"(SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE user_id = %s AND role = %s "
            "AND status = %s LIMIT %s) AS streaming_rows), "
            # Replies the user asked for (they carry a request id); imported ones do not count.
            f"(SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE user_id = %s AND role = %s "
            "AND created_at >= %s AND request_id <> '' LIMIT %s) AS recent_rows)",
            [
                user.pk,
                request_id,
                user.pk,
                assistant,
                streaming,
                max(settings.MAX_CONCURRENT_GENERATIONS, 0),
                user.pk,
                assistant,
                since,
                max(settings.MESSAGES_PER_MINUTE, 0),
            ],
        )
        replayed, streaming_count, recent = cursor.fetchone()
    return SenderState(replayed=replayed, streaming=streaming_count, recent=recent)


def _check_limits(state: SenderState, request_id: str) -> None:
    if state.streaming >= settings.MAX_CONCURRENT_GENERATIONS:
        raise Refused(
            errors.TOO_MANY_GENERATIONS,
            f"You already have {state.streaming} replies in progress. "
            "Wait for one to finish or stop it.",
            request_id,
        )
    if state.recent >= settings.MESSAGES_PER_MINUTE:
        raise Refused(
            errors.RATE_LIMITED,
            f"You can send {settings.MESSAGES_PER_MINUTE} messages a minute. Try again shortly.",
            request_id,
        )


def _check_configured(request_id: str) -> None:
    if not config_from_settings().configured:
        raise Refused(errors.NOT_CONFIGURED, NOT_CONFIGURED_MESSAGE, request_id)


def active_path(conversation: Conversation) -> list[Message]:
    """The messages the conversation reads as now, oldest first (reasoning not loaded: it is
    never sent back)."""
    messages = conversation.messages.filter(active=True).defer("reasoning").order_by("id")
    if conversation.has_images:
        messages = messages.prefetch_related("attachments")
    return list(messages)


def _turn(message: Message, model: ChatModel) -> tuple[dict[str, Any], int]:
    """One message as the upstream reads it, and its estimated tokens (images included)."""
    tokens = prices.estimate_prompt_tokens([{"content": message.content}])
    images = (
        list(message.attachments.all())
        # The conversation is loaded with the message by every caller: no query per message.
        if message.role == Message.Role.USER and message.conversation.has_images
        else []
    )
    if not images:
        return {"role": message.role, "content": message.content}, tokens
    if not model.vision:
        # History from a vision model, continued with one that cannot see.
        note = f"{message.content}\n\n[{len(images)} image(s) attached, not shown to this model]"
        return {"role": message.role, "content": note}, prices.estimate_tokens(note) + 4
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts += [{"type": "image_url", "image_url": {"url": data_uri(a)}} for a in images]
    tokens += sum(max(image_tokens(a.width, a.height), MIN_IMAGE_TOKENS) for a in images)
    return {"role": message.role, "content": parts}, tokens


def build_prompt(
    conversation: Conversation,
    history: list[Message],
    model: ChatModel,
    params: Params,
    request_id: str,
) -> tuple[dict[str, Any], int]:
    """The upstream body for the next reply and its estimated prompt tokens.

    History is the active path up to and including the question; reasoning is never sent back.
    The oldest turns are dropped to leave room for the reply within the model's context.
    """
    system_prompt = params.system_prompt
    if system_prompt is None:
        system_prompt = conversation.system_prompt
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    turns: list[dict[str, Any]] = []
    sizes: list[int] = []
    for message in history:
        if message.content and (
            message.role == Message.Role.USER or message.status != Message.Status.STREAMING
        ):
            turn, size = _turn(message, model)
            turns.append(turn)
            sizes.append(size)
    # Stored parameters go through the same check as a frame's: a row written before it
    # existed (or by hand) cannot take a negative or textual max_tokens into a reservation.
    stored = protocol.stored_params(conversation.params)
    requested = params.max_tokens or stored.max_tokens
    max_tokens = min(requested or settings.DEFAULT_MAX_TOKENS, model.max_output_tokens)
    fixed = prices.estimate_prompt_tokens(system)
    total = fixed + sum(sizes)
    while len(turns) > 1 and total + max_tokens > model.context_length:
        total -= sizes.pop(0)
        turns.pop(0)
        # A conversation sent upstream starts with a question.
        while len(turns) > 1 and turns[0]["role"] != Message.Role.USER:
            total -= sizes.pop(0)
            turns.pop(0)
    room = model.context_length - total
    if room < min(max_tokens, MIN_REPLY_TOKENS):
        raise Refused(
            errors.CONTENT_TOO_LONG,
            f"The message is too long for {model.name}'s context of "
            f"{model.context_length:,} tokens. Shorten it or pick a model with a longer context.",
            request_id,
        )
    max_tokens = min(max_tokens, room)
    body: dict[str, Any] = {
        "model": model.model_id,
        "messages": system + turns,
        "max_tokens": max_tokens,
    }
    temperature = params.temperature
    if temperature is None:
        temperature = stored.temperature
    if temperature is not None:
        body["temperature"] = temperature
    top_p = params.top_p if params.top_p is not None else stored.top_p
    if top_p is not None:
        body["top_p"] = top_p
    return body, total


def _start_reply(
    *,
    user: User,
    conversation: Conversation,
    model: ChatModel,
    history: list[Message],
    params: Params,
    request_id: str,
    parent: Message | None,
    user_message: Message | None,
    touch_conversation: bool = True,
) -> GenerationPlan:
    body, prompt_estimate = build_prompt(conversation, history, model, params, request_id)
    input_price, output_price = model.input_price, model.output_price
    assert input_price is not None and output_price is not None
    worst_case = prices.cost(
        prices.upper_prompt_tokens(prompt_estimate), body["max_tokens"], input_price, output_price
    )
    budgets.check_budget(user, worst_case, request_id)
    now = timezone.now()
    reply = rows.create(
        Message,
        conversation=conversation,
        user=user,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        request_id=request_id,
        parent=parent,
        model=model,
        params=params.as_json(),
        input_price=input_price,
        output_price=output_price,
        # Until the provider reports usage, the estimate stands (the reaper bills with it).
        prompt_tokens=prompt_estimate,
        usage_estimated=True,
        heartbeat_at=now,
        worker=settings.WORKER_NAME,
    )
    charge = rows.create(
        Charge,
        user=user,
        message=reply,
        conversation=conversation,
        chat_model=model,
        model_id=model.model_id,
        kind=Charge.Kind.REPLY,
        input_price=input_price,
        output_price=output_price,
        reserved=worst_case,
        prompt_tokens=prompt_estimate,
        estimated=True,
    )
    if touch_conversation:
        conversation.model = model
        conversation.save(update_fields=["model", "updated_at"])
    return GenerationPlan(
        message_id=reply.pk,
        conversation_id=conversation.pk,
        user_id=user.pk,
        request_id=request_id,
        user_message=(
            None
            if user_message is None
            else {"id": user_message.pk, "content": user_message.content}
        ),
        model_id=model.model_id,
        reasoning_model=model.reasoning,
        input_price=input_price,
        output_price=output_price,
        body=body,
        prompt_estimate=prompt_estimate,
        charge_id=charge.pk,
        reserved=worst_case,
        wants_title=(
            not conversation.title_is_custom
            and sum(1 for m in history if m.role == Message.Role.USER) == 1
        ),
    )


def _replay(user: User, request_id: str, found: int | None) -> GenerationPlan | None:
    """The plan of an earlier accepted request with the same id (its reply `found`, from
    `_sender_state`), marked duplicate; None when there was none."""
    if found is None:
        return None
    reply = Message.objects.select_related("model", "parent").get(pk=found)
    user_message = reply.parent if reply.parent and reply.parent.role == Message.Role.USER else None
    return GenerationPlan(
        message_id=reply.pk,
        conversation_id=reply.conversation_id,
        user_id=user.pk,
        request_id=request_id,
        user_message=(
            None
            if user_message is None
            else {"id": user_message.pk, "content": user_message.content}
        ),
        model_id=reply.model.model_id if reply.model else "",
        reasoning_model=bool(reply.model and reply.model.reasoning),
        input_price=reply.input_price or Decimal(0),
        output_price=reply.output_price or Decimal(0),
        body={},
        prompt_estimate=reply.prompt_tokens,
        charge_id=None,
        duplicate=True,
    )


def default_title(content: str) -> str:
    first_line = next((line.strip() for line in content.splitlines() if line.strip()), "")
    return first_line[:80] or "New chat"


def accept(user: User, frame: Send | Regenerate | Edit) -> GenerationPlan:
    """Accept a question, a regenerate or an edit: store what it changes and an empty streaming
    reply, or refuse changing nothing.

    One user's requests are accepted one at a time (`_lock_user`), so limits and budgets hold
    under concurrency. A request id seen before answers as it did the first time, marked
    duplicate; one racing in from another socket meanwhile is caught by the unique index and
    answered the same way.
    """
    try:
        with transaction.atomic():
            _lock_user(user)
            state = _sender_state(user, frame.request_id)
            replay = _replay(user, frame.request_id, state.replayed)
            if replay is not None:
                return replay
            if isinstance(frame, Send):
                return _accept_send(user, frame, state)
            if isinstance(frame, Regenerate):
                return _accept_regenerate(user, frame, state)
            return _accept_edit(user, frame, state)
    except IntegrityError:
        replay = _replay(user, frame.request_id, _sender_state(user, frame.request_id).replayed)
        if replay is None:
            raise
        return replay


def _check_shown(message: Message, what: str, request_id: str) -> None:
    """Only a message on the conversation's shown path can be regenerated or edited. One that
    an edit, a regenerate or a switch of versions replaced (in another tab, say) would build its
    prompt from the wrong turns and hide the conversation's current replies, a streaming one
    included, which would go on being written and billed out of sight."""
    if not message.active:
        raise Refused(
            errors.CONFLICT,
            f"This {what} has been replaced since the page showed it. "
            "Reload the conversation to see its latest version.",
            request_id,
        )


def _accept_send(user: User, frame: Send, state: SenderState) -> GenerationPlan:
    """A question: in a new conversation (from a preset or not) or an existing one."""
    conversation = None
    if frame.conversation is not None:
        conversation = owned_conversation(user, frame.conversation)
    preset = None
    if frame.preset is not None and conversation is None:
        preset = usable_preset(user, frame.preset, frame.request_id)
    model_id = frame.model or (
        conversation.model.model_id if conversation and conversation.model else None
    )
    if model_id is None and preset is not None and preset.model is not None:
        model_id = preset.model.model_id
    model = usable_model(model_id or default_model_id(user), frame.request_id)
    images = _unsent_images(user, frame.images, model, frame.request_id)
    _check_configured(frame.request_id)
    _check_limits(state, frame.request_id)
    created = conversation is None
    if conversation is None:
        conversation = rows.create(
            Conversation,
            owner=user,
            title=default_title(frame.content),
            model=model,
            system_prompt=preset.system_prompt if preset else "",
            params=(
                {
                    k: v
                    for k, v in protocol.stored_params(preset.params).as_json().items()
                    if k != "system_prompt"
                }
                if preset
                else {}
            ),
        )
    params = frame.params
    if params.as_json():
        conversation.params = {
            **protocol.stored_params(conversation.params).as_json(),
            **{k: v for k, v in params.as_json().items() if k != "system_prompt"},
        }
        if params.system_prompt is not None:
            conversation.system_prompt = params.system_prompt
        conversation.save(update_fields=["params", "system_prompt", "updated_at"])
    # A conversation created just now has no messages to read back.
    history = [] if created else active_path(conversation)
    parent = history[-1] if history else None
    question = rows.create(
        Message,
        conversation=conversation,
        user=user,
        role=Message.Role.USER,
        content=frame.content,
        parent=parent,
    )
    if images:
        attached = Attachment.objects.filter(
            pk__in=[a.pk for a in images], message__isnull=True
        ).update(message=question)
        if attached != len(images):
            # Removed meanwhile (never-sent images are swept after a while).
            raise Refused(
                errors.NOT_FOUND,
                "An image was not found; upload it again.",
                frame.request_id,
            )
        if not conversation.has_images:
            conversation.has_images = True
            conversation.save(update_fields=["has_images"])
    history.append(question)
    return _start_reply(
        user=user,
        conversation=conversation,
        model=model,
        history=history,
        params=Params(),
        request_id=frame.request_id,
        parent=question,
        user_message=question,
        # A new conversation already names the model and was stamped just now.
        touch_conversation=not created,
    )


def _accept_regenerate(user: User, frame: Regenerate, state: SenderState) -> GenerationPlan:
    """Replace a finished reply with a new one; the old one stays stored (billed), inactive."""
    old = (
        Message.objects.filter(pk=frame.message, user=user, role=Message.Role.ASSISTANT)
        .select_related("conversation", "model", "parent")
        .first()
    )
    if old is None or old.conversation.owner_id != user.pk:
        raise Refused(errors.NOT_FOUND, "No such message.", frame.request_id)
    _check_shown(old, "reply", frame.request_id)
    if old.status == Message.Status.STREAMING:
        raise Refused(
            errors.CONFLICT,
            "This reply is still being written. Stop it first.",
            frame.request_id,
        )
    conversation = old.conversation
    model_id = frame.model or (old.model.model_id if old.model else None)
    model = usable_model(model_id, frame.request_id)
    _check_configured(frame.request_id)
    _check_limits(state, frame.request_id)
    history = [m for m in active_path(conversation) if m.pk < old.pk]
    conversation.messages.filter(active=True, pk__gte=old.pk).update(active=False)
    return _start_reply(
        user=user,
        conversation=conversation,
        model=model,
        history=history,
        params=Params(),
        request_id=frame.request_id,
        parent=old.parent,
        user_message=None,
    )


def _accept_edit(user: User, frame: Edit, state: SenderState) -> GenerationPlan:
    """Replace a question with a new text and answer it; the old question and everything after
    it stay stored (billed), inactive."""
    old = (
        Message.objects.filter(pk=frame.message, user=user, role=Message.Role.USER)
        .select_related("conversation", "conversation__model")
        .first()
    )
    if old is None or old.conversation.owner_id != user.pk:
        raise Refused(errors.NOT_FOUND, "No such message.", frame.request_id)
    _check_shown(old, "question", frame.request_id)
    conversation = old.conversation
    if conversation.messages.filter(
        pk__gt=old.pk, active=True, status=Message.Status.STREAMING
    ).exists():
        raise Refused(
            errors.CONFLICT,
            "A reply to this question is still being written. Stop it first.",
            frame.request_id,
        )
    model_id = frame.model or (conversation.model.model_id if conversation.model else None)
    model = usable_model(model_id, frame.request_id)
    _check_configured(frame.request_id)
    _check_limits(state, frame.request_id)
    history = [m for m in active_path(conversation) if m.pk < old.pk]
    conversation.messages.filter(active=True, pk__gte=old.pk).update(active=False)
    question = Message.objects.create(
        conversation=conversation,
        user=user,
        role=Message.Role.USER,
        content=frame.content,
        parent=old.parent,
    )
    # The edited question keeps its images (copied: the old one stays as it was).
    copies = list(old.attachments.all())
    if copies and not model.vision:
        raise Refused(
            errors.VISION_REQUIRED,
            f"{model.name} cannot read images. Pick a vision model for this question.",
            frame.request_id,
        )
    for image in copies:
        image.pk = None
        image.message = question
        image.save()
    history.append(question)
    return _start_reply(
        user=user,
        conversation=conversation,
        model=model,
        history=history,
        params=Params(),
        request_id=frame.request_id,
        parent=question,
        user_message=question,
    )


def _unsent_images(
    user: User, ids: tuple[int, ...], model: ChatModel, request_id: str
) -> list[Attachment]:
    """The user's uploaded images for this message; refused before anything is sent when the
    model cannot read images."""
    if not ids:
        return []
    if not model.vision:
        raise Refused(
            errors.VISION_REQUIRED,
            f"{model.name} cannot read images. Pick a model marked vision, or remove the images.",
            request_id,
        )
    images = list(Attachment.objects.filter(pk__in=ids, owner=user, message__isnull=True))
    if len(images) != len(ids):
        raise Refused(errors.NOT_FOUND, "An image was not found; upload it again.", request_id)
    return images


def usable_preset(user: User, preset_id: int, request_id: str) -> Preset:
    preset = (
        Preset.objects.filter(Q(owner=user) | Q(owner__isnull=True), pk=preset_id)
        .select_related("model")
        .first()
    )
    if preset is None:
        raise Refused(errors.NOT_FOUND, "No such preset.", request_id)
    return preset


def profile_for(user: User) -> Profile:
    profile, _ = Profile.objects.get_or_create(user=user)
    return profile


def default_model_id(user: User) -> str | None:
    profile = Profile.objects.filter(user=user).select_related("default_model").first()
    if profile is None or profile.default_model is None:
        return None
    return profile.default_model.model_id


def in_flight(user: User, conversation_id: int) -> list[InFlight]:
    """The user's conversation's replies still streaming (as last saved), or not_found."""
    owned_conversation(user, conversation_id)
    return [
        InFlight(m.pk, m.conversation_id, m.content, m.reasoning, m.seq, m.status, m.heartbeat_at)
        for m in Message.objects.filter(
            conversation_id=conversation_id,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
        ).order_by("id")
    ]


def streaming_ids(user: User, conversation_id: int) -> list[int]:
    """The ids of the user's conversation's replies still streaming, or not_found."""
    owned_conversation(user, conversation_id)
    return list(
        Message.objects.filter(
            conversation_id=conversation_id,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
        )
        .order_by("id")
        .values_list("pk", flat=True)
    )


def owned_reply(user: User, message_id: int) -> Message:
    reply = (
        Message.objects.filter(pk=message_id, user=user, role=Message.Role.ASSISTANT)
        .select_related("conversation")
        .first()
    )
    if reply is None or reply.conversation.owner_id != user.pk:
        raise Refused(errors.NOT_FOUND, "No such message.")
    return reply


def flush_progress(updates: list[Progress], heartbeat_ids: list[int]) -> set[int]:
    """Save the partial text of streaming replies, and a heartbeat, in one transaction.

    Only the text that came since the last save is sent, appended by the database, so this
    process's work for a flush does not grow with the replies' length (SQLite's own rewriting of
    each row still does; PostgreSQL's happens in its own process). An append applies only on
    top of the text it was computed against (the row's `seq`); the ids of the replies whose saved
    text is somewhere else (a save that failed to report its commit) are returned, and their next
    save sends the whole text. One prepared statement for every reply, rather than an ORM query
    built per reply: this runs every second for all of them.
    """
    now = timezone.now()
    table = connection.ops.quote_name(Message._meta.db_table)
    streaming = Message.Status.STREAMING.value
    refused: set[int] = set()
    with transaction.atomic(), connection.cursor() as cursor:
        appends = [u for u in updates if not u.whole]
        if appends:
            cursor.executemany(
                f"UPDATE {table} SET content = content || %s, reasoning = reasoning || %s, "  # noqa: S608 - names from our models
                "seq = %s, heartbeat_at = %s WHERE id = %s AND status = %s AND seq = %s",
                [
                    (u.content, u.reasoning, u.seq, now, u.message_id, streaming, u.saved_seq)
                    for u in appends
                ],
            )
            if cursor.rowcount != len(appends):
                # Some did not apply: replies that ended meanwhile (no longer streaming), or
                # saved text that is not where the append expected it.
                saved_at = dict(
                    Message.objects.filter(
                        pk__in=[u.message_id for u in appends], status=streaming
                    ).values_list("pk", "seq")
                )
                refused = {
                    u.message_id
                    for u in appends
                    if u.message_id in saved_at and saved_at[u.message_id] != u.seq
                }
        wholes = [u for u in updates if u.whole]
        if wholes:
            cursor.executemany(
                f"UPDATE {table} SET content = %s, reasoning = %s, seq = %s, heartbeat_at = %s "  # noqa: S608 - names from our models
                "WHERE id = %s AND status = %s",
                [(u.content, u.reasoning, u.seq, now, u.message_id, streaming) for u in wholes],
            )
        if heartbeat_ids:
            Message.objects.filter(pk__in=heartbeat_ids, status=streaming).update(heartbeat_at=now)
    return refused


def finish_generation(outcome: Outcome) -> Message | None:
    """Write the end of a reply once: text, reasoning, usage, cost and status; settle its
    charge. Returns the reply as written (for its `done` frame), or None when it was deleted
    meanwhile (the charge is settled anyway: the money was spent).

    Nothing is read back: the prices and the prompt estimate are the ones accepted with the
    reply, and whether the reply still exists is the count its update reports.
    """
    plan = outcome.plan
    message = Message(
        pk=plan.message_id,
        conversation_id=plan.conversation_id,
        status=outcome.status,
        content=outcome.content,
        reasoning=outcome.reasoning,
        seq=outcome.seq,
        finish_reason=outcome.finish_reason[:30],
        error_code=outcome.error_code,
        error_message=outcome.error_message[:500],
        lava_request_id=outcome.lava_request_id[:100],
        chutes_invocation_id=outcome.chutes_invocation_id[:100],
        reasoning_ms=outcome.reasoning_ms,
        input_price=plan.input_price,
        output_price=plan.output_price,
        prompt_tokens=plan.prompt_estimate,
        usage_estimated=True,
        finished_at=timezone.now(),
    )
    if outcome.prompt_tokens is not None and outcome.completion_tokens is not None:
        message.prompt_tokens = outcome.prompt_tokens
        message.completion_tokens = outcome.completion_tokens
        message.cached_tokens = outcome.cached_tokens
        message.usage_estimated = False
    usage_cost = settlement.price_reply(message)
    message.cost = settlement.bounded(usage_cost, plan.reserved)
    # Three statements written once (rows.update), rather than compiled for every reply. The
    # reply's row first, then its charge: the order the reaper (`interrupt`) takes them in, so
    # the two cannot deadlock on PostgreSQL.
    with transaction.atomic():
        if outcome.keep_saved_text:
            saved = Message.objects.filter(pk=message.pk).values("content", "reasoning").first()
            message.content = saved["content"] if saved else ""
            message.reasoning = saved["reasoning"] if saved else ""
            usage_cost = settlement.price_reply(message)
            message.cost = settlement.bounded(usage_cost, plan.reserved)
        # Only the fields the end changes, in one statement.
        written = rows.update(
            Message,
            {"pk": message.pk},
            **{name: getattr(message, name) for name in FINISHED_FIELDS},
        )
        if plan.charge_id is not None:
            # Whatever its state: if the reaper settled it on an estimate meanwhile (a process
            # that stalled), the reply's real end and usage replace that, as on the reply.
            rows.update(
                Charge, {"pk": plan.charge_id}, **settlement.settled_fields(message, usage_cost)
            )
        if not written:
            return None
        rows.update(Conversation, {"pk": message.conversation_id}, updated_at=message.finished_at)
    return message


FINISHED_FIELDS = (
    "status",
    "content",
    "reasoning",
    "seq",
    "finish_reason",
    "error_code",
    "error_message",
    "lava_request_id",
    "chutes_invocation_id",
    "reasoning_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "usage_estimated",
    "cost",
    "finished_at",
)


def interrupt(
    message_ids: list[int] | None = None, *, stale_before: datetime | None = None
) -> list[Message]:
    """Mark streaming replies `interrupted`, keeping their saved text, and bill what they used.

    Either the given ids (a generation no process runs any more) or every reply whose heartbeat
    is older than `stale_before` (the reaper). Each reply is settled in a transaction of its
    own: one that cannot be (a row the database refuses to write back) is logged and ended
    with its status alone, and the others are settled all the same.
    """
    query = Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
    if message_ids is not None:
        query = query.filter(pk__in=message_ids)
    if stale_before is not None:
        query = query.filter(Q(heartbeat_at__lt=stale_before) | Q(heartbeat_at__isnull=True))
    done: list[Message] = []
    for message_id in list(query.order_by("id").values_list("pk", flat=True)):
        try:
            message = _interrupt_one(message_id)
        except Exception:
            logger.exception("could not settle interrupted reply %s; ending it as is", message_id)
            message = _end_as_is(message_id)
        if message is not None:
            done.append(message)
    return done


INTERRUPTED_MESSAGE = "The server stopped before this reply was finished."


def settle_orphans(before: datetime, worker: str | None) -> list[Message]:
    """Interrupt the replies left `streaming` since before `before` (by `worker` only, when
    given): a process that starts cannot be running them."""
    query = Message.objects.filter(
        role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
    ).filter(Q(heartbeat_at__lt=before) | Q(heartbeat_at__isnull=True))
    if worker is not None:
        query = query.filter(worker=worker)
    ids = list(query.values_list("pk", flat=True))
    return interrupt(ids) if ids else []


def _interrupt_one(message_id: int) -> Message | None:
    with transaction.atomic():
        message = (
            Message.objects.select_for_update()
            .filter(pk=message_id, status=Message.Status.STREAMING)
            .first()
        )
        if message is None:
            return None  # it ended meanwhile
        message.status = Message.Status.INTERRUPTED
        message.error_code = "interrupted"
        message.error_message = INTERRUPTED_MESSAGE
        message.usage_estimated = True
        message.finished_at = timezone.now()
        usage_cost = settlement.price_reply(message)
        charge = Charge.objects.filter(message=message).only("pk", "reserved", "state").first()
        message.cost = settlement.bounded(usage_cost, charge.reserved if charge else None)
        if charge is not None and charge.state == Charge.State.RESERVED:
            Charge.objects.filter(pk=charge.pk).update(
                **settlement.settled_fields(message, usage_cost)
            )
        message.save()
        return message


def _end_as_is(message_id: int) -> Message | None:
    """The last resort for a reply that cannot be settled: never left `streaming`. Its charge
    keeps its reservation (the worst case), so the budget stays on the safe side."""
    try:
        updated = Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
            status=Message.Status.INTERRUPTED,
            error_code="interrupted",
            error_message=INTERRUPTED_MESSAGE,
            finished_at=timezone.now(),
        )
        if not updated:
            return None
        return Message.objects.defer("content", "reasoning").get(pk=message_id)
    except Exception:
        logger.exception("could not end reply %s", message_id)
        return None


def delete_conversation(conversation: Conversation) -> None:
    """Delete a conversation; replies still streaming in it are stopped first (their charges
    settle when they end, the money having been spent)."""
    streaming = list(
        conversation.messages.filter(status=Message.Status.STREAMING).values_list("pk", flat=True)
    )
    conversation.delete()
    if streaming:
        from .generation import request_stop_from_sync

        for message_id in streaming:
            request_stop_from_sync(message_id)


# Titles -----------------------------------------------------------------------------------

TITLE_INSTRUCTION = (
    "Write a title of at most six words for the conversation below. Answer with the title "
    "only: no quotes, no trailing punctuation."
)
TITLE_EXCERPT_CHARS = 1500
MAX_TITLE_CHARS = 80
# Quotes (straight and curly) and markdown marks models put around a title.
TITLE_DECORATION = " \t#*_`\"'\u201c\u201d\u2018\u2019"


@dataclass(frozen=True)
class TitlePlan:
    conversation_id: int
    charge_id: int
    reserved: Decimal
    body: dict[str, Any]
    model_id: str
    reasoning_model: bool
    prompt_estimate: int


def plan_title(message_id: int, *, again: bool = False) -> TitlePlan | None:
    """Reserve and describe the call that titles a conversation from its first exchange, or
    None when it should not happen (renamed meanwhile, model gone, budget too tight).

    A conversation is titled once: regenerating or editing its first exchange does not pay for
    another title. `again` is the user asking for a new one (which also ends a renamed title).
    """
    with transaction.atomic():
        reply = (
            Message.objects.filter(pk=message_id, status=Message.Status.COMPLETE)
            .select_related("conversation", "model", "parent", "user")
            .first()
        )
        if reply is None or reply.parent is None:
            return None
        if reply.conversation.title_is_custom and not again:
            return None
        model = reply.model
        if model is None or not model.enabled or not model.priced:
            return None
        _lock_user(reply.user)
        titled = Charge.objects.filter(
            conversation_id=reply.conversation_id, kind=Charge.Kind.TITLE
        ).exists()
        if titled and not again:
            return None
        if again:
            Conversation.objects.filter(pk=reply.conversation_id).update(title_is_custom=False)
        excerpt = (
            f"Question: {reply.parent.content[:TITLE_EXCERPT_CHARS]}\n\n"
            f"Answer: {reply.content[:TITLE_EXCERPT_CHARS]}"
        )
        messages = [
            {"role": "system", "content": TITLE_INSTRUCTION},
            {"role": "user", "content": excerpt},
        ]
        body: dict[str, Any] = {
            "model": model.model_id,
            "messages": messages,
            # A reasoning model thinks before it answers, even for a title.
            "max_tokens": 1024 if model.reasoning else 32,
            "temperature": 0.3,
        }
        if model.reasoning and "qwen3" in model.model_id.lower():
            body["chat_template_kwargs"] = {"enable_thinking": False}
        prompt_estimate = prices.estimate_prompt_tokens(messages)
        assert model.input_price is not None and model.output_price is not None
        worst_case = prices.cost(
            prices.upper_prompt_tokens(prompt_estimate),
            body["max_tokens"],
            model.input_price,
            model.output_price,
        )
        try:
            budgets.check_budget(reply.user, worst_case, "")
        except Refused:
            return None  # the first line of the question stays the title
        charge = Charge.objects.create(
            user=reply.user,
            conversation=reply.conversation,
            chat_model=model,
            model_id=model.model_id,
            kind=Charge.Kind.TITLE,
            input_price=model.input_price,
            output_price=model.output_price,
            reserved=worst_case,
            prompt_tokens=prompt_estimate,
            estimated=True,
        )
        return TitlePlan(
            conversation_id=reply.conversation_id,
            charge_id=charge.pk,
            reserved=worst_case,
            body=body,
            model_id=model.model_id,
            reasoning_model=model.reasoning,
            prompt_estimate=prompt_estimate,
        )


def first_exchange_reply(user: User, conversation_id: int) -> int:
    """The finished reply of the conversation's first question as it reads now: what a new
    title is written from. Refused when there is none yet."""
    conversation = owned_conversation(user, conversation_id)
    path = [m for m in active_path(conversation)]
    question = next((m for m in path if m.role == Message.Role.USER), None)
    reply = next(
        (
            m
            for m in path
            if question is not None
            and m.parent_id == question.pk
            and m.role == Message.Role.ASSISTANT
            and m.status == Message.Status.COMPLETE
        ),
        None,
    )
    if reply is None:
        raise Refused(errors.CONFLICT, "A title is written once the first reply is complete.")
    return reply.pk


def clean_title(text: str) -> str:
    """The first line of a model's answer, without decoration, at most 80 characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = re.sub(r"^(title\s*:\s*)", "", line, flags=re.IGNORECASE)
    line = line.strip(TITLE_DECORATION).rstrip(".!:;,")
    line = re.sub(r"\s+", " ", line)
    if len(line) > MAX_TITLE_CHARS:
        line = line[: MAX_TITLE_CHARS - 1].rstrip() + "…"
    return line


def finish_title(
    plan: TitlePlan,
    text: str,
    reasoning: str,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    lava_request_id: str,
) -> str | None:
    """Settle the title's charge and apply the title unless the user renamed meanwhile."""
    with transaction.atomic():
        charge = Charge.objects.select_for_update().get(pk=plan.charge_id)
        if prompt_tokens is None or completion_tokens is None:
            charge.prompt_tokens = plan.prompt_estimate
            charge.completion_tokens = prices.estimate_tokens(text + reasoning)
            charge.estimated = True
        else:
            charge.prompt_tokens = prompt_tokens
            charge.completion_tokens = completion_tokens
            charge.estimated = False
        assert charge.input_price is not None and charge.output_price is not None
        charge.usage_cost = prices.cost(
            charge.prompt_tokens, charge.completion_tokens, charge.input_price, charge.output_price
        )
        charge.cost = settlement.bounded(charge.usage_cost, plan.reserved)
        charge.state = Charge.State.SETTLED
        charge.lava_request_id = lava_request_id[:100]
        charge.settled_at = timezone.now()
        charge.save()
        title = clean_title(text)
        if not title:
            return None
        updated = Conversation.objects.filter(
            pk=plan.conversation_id, title_is_custom=False
        ).update(title=title)
        return title if updated else None


# Alternatives ----------------------------------------------------------------------------------


def siblings(conversation: Conversation) -> dict[int, list[int]]:
    """For every message, the ids of the versions at its place (same parent, same role)."""
    groups: dict[tuple[int | None, str], list[int]] = {}
    for pk, parent, role in conversation.messages.values_list("pk", "parent_id", "role").order_by(
        "id"
    ):
        groups.setdefault((parent, role), []).append(pk)
    return {pk: group for group in groups.values() for pk in group}


def show_version(user: User, message_id: int) -> Conversation:
    """Make `message_id` the version shown at its place; the conversation continues from it.

    The path becomes its ancestors, itself, and below it the most recent version at each step.
    """
    with transaction.atomic():
        target = (
            Message.objects.filter(pk=message_id, user=user).select_related("conversation").first()
        )
        if target is None or target.conversation.owner_id != user.pk:
            raise Refused(errors.NOT_FOUND, "No such message.")
        conversation = target.conversation
        if conversation.messages.filter(status=Message.Status.STREAMING).exists():
            raise Refused(errors.CONFLICT, "A reply is still being written. Wait or stop it first.")
        rows = list(conversation.messages.values_list("pk", "parent_id"))
        parent_of = dict(rows)
        children: dict[int | None, list[int]] = {}
        for pk, parent in rows:
            children.setdefault(parent, []).append(pk)
        path = []
        node: int | None = target.pk
        while node is not None:
            path.append(node)
            node = parent_of.get(node)
        node = target.pk
        while children.get(node):
            node = max(children[node])
            path.append(node)
        conversation.messages.exclude(pk__in=path).update(active=False)
        conversation.messages.filter(pk__in=path).update(active=True)
    return conversation


# Sharing -----------------------------------------------------------------------------------------


def create_share(
    conversation: Conversation,
    *,
    include_reasoning: bool,
    include_costs: bool,
    include_system_prompt: bool,
) -> ShareLink:
    """A read-only snapshot of the conversation as it reads now; later messages are not shown."""
    messages = []
    for message in conversation.messages.filter(active=True).select_related("model").order_by("id"):
        if message.role == Message.Role.ASSISTANT and message.status == Message.Status.STREAMING:
            continue
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.role == Message.Role.ASSISTANT:
            item["model"] = message.model.name if message.model else ""
            if include_reasoning and message.reasoning:
                item["reasoning"] = message.reasoning
            if include_costs and message.cost is not None:
                item["cost"] = prices.plain(message.cost)
        messages.append(item)
    snapshot: dict[str, Any] = {"title": conversation.title, "messages": messages}
    if include_system_prompt and conversation.system_prompt:
        snapshot["system_prompt"] = conversation.system_prompt
    return ShareLink.objects.create(
        token=secrets.token_urlsafe(18),
        conversation=conversation,
        owner=conversation.owner,
        snapshot=snapshot,
        include_reasoning=include_reasoning,
        include_costs=include_costs,
        include_system_prompt=include_system_prompt,
    )


def live_share(token: str) -> ShareLink | None:
    return ShareLink.objects.filter(token=token, revoked_at__isnull=True).first()
