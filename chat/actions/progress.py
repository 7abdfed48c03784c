"""A reply's life after it was accepted: partial text saved as it streams, the end written and
its charge settled once, and replies no process runs any more interrupted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from chat import rows
from chat.billing import settlement
from chat.models import (
    Charge,
    Conversation,
    Message,
)

from .replies import GenerationPlan

logger = logging.getLogger(__name__)


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
