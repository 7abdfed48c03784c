"""Accepting a send, a regeneration or an edit: limits checked, the question and its reply
written, the charge reserved, all in one transaction; a repeated request is replayed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from chat import errors, protocol, rows
from chat.billing import budgets, prices
from chat.errors import Refused
from chat.models import (
    Attachment,
    Charge,
    ChatModel,
    Conversation,
    Message,
)
from chat.protocol import Edit, Params, Regenerate, Send
from chat.upstream.errors import NOT_CONFIGURED_MESSAGE
from chat.upstream.settings import config_from_settings

from .conversations import active_path, default_model_id, owned_conversation, usable_model
from .presets import usable_preset
from .prompts import build_prompt


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


def accept_many(
    requests: list[tuple[User, Send | Regenerate | Edit]],
) -> list[GenerationPlan | Exception]:
    """Accept requests that arrived together in one transaction: each as `accept` would alone,
    in a savepoint of its own, so one refused or failing request changes nothing for the others.

    Nothing is visible, and no reply may start, before the whole batch commits; a failure of the
    commit itself fails every request, leaving nothing written. On PostgreSQL each request locks
    its user's row until the commit, so requests are taken in order of user: two batches in two
    processes then lock in the same order and cannot deadlock.
    """
    if len(requests) == 1:
        user, frame = requests[0]
        try:
            return [accept(user, frame)]
        except Exception as exc:
            return [exc]
    results: dict[int, GenerationPlan | Exception] = {}
    with transaction.atomic():
        for i in sorted(range(len(requests)), key=lambda i: requests[i][0].pk):
            user, frame = requests[i]
            try:
                results[i] = accept(user, frame)
            except Exception as exc:
                results[i] = exc
        if transaction.get_rollback() or connection.closed_in_transaction:
            # A request's savepoint could not be rolled back (the connection was lost): the
            # whole transaction is, so none of the batch was written, whatever it returned.
            raise DatabaseError("the batch's transaction could not be completed")
    return [results[i] for i in range(len(requests))]


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


def _replace_from(
    old: Message, model_id: str | None, state: SenderState, request_id: str
) -> tuple[ChatModel, list[Message]]:
    """For a regenerate or an edit of `old`: the model, checked with the limits, and the shown
    path before `old`; `old` and everything after it stop being shown (they stay stored)."""
    model = usable_model(model_id, request_id)
    _check_configured(request_id)
    _check_limits(state, request_id)
    conversation = old.conversation
    history = [m for m in active_path(conversation) if m.pk < old.pk]
    conversation.messages.filter(active=True, pk__gte=old.pk).update(active=False)
    return model, history


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
    model, history = _replace_from(old, model_id, state, frame.request_id)
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
    model, history = _replace_from(old, model_id, state, frame.request_id)
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
