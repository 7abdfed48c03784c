"""One generation: one assistant reply running as its own asyncio task (see `engine.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError

from chat import protocol
from chat.actions import progress as progress_actions
from chat.actions.progress import Outcome
from chat.actions.replies import GenerationPlan
from chat.billing import prices
from chat.models import Message
from chat.upstream import client as upstream_client
from chat.upstream.errors import UpstreamError
from chat.upstream.settings import config_from_settings
from chat.upstream.text import clean_text

from .pacing import Pacing

if TYPE_CHECKING:
    from .engine import GenerationManager

logger = logging.getLogger(__name__)


# How long the final write keeps retrying a database that is locked or away.
FINAL_WRITE_DEADLINE = 60.0


# The database is away, locked or lost the connection: every reply's save fails alike, and
# the next attempt may succeed. Any other failure may be one reply's own (a value the database
# refuses), and is tried again for each reply alone.
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)


# Saves of one reply that failed on their own, in a row, before the reply is ended.
MAX_SAVE_FAILURES = 3


SAVE_FAILED = "save_failed"


SAVE_FAILED_MESSAGE = "This reply could not be saved; the text saved so far is kept."


# Tokens beyond max_tokens x prices.MAX_OVERCOUNT (by estimate) before a reply is cut: room
# for a short reply whose few tokens the estimate over-counts.
CUT_SLACK_TOKENS = 16


@dataclass(frozen=True)
class Snapshot:
    message_id: int
    conversation_id: int
    seq: int
    content: str
    reasoning: str
    status: str


def _joined(parts: list[str]) -> str:
    """The parts as one string, kept as the list's only part (so joining again is free)."""
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""


def _joined_tail(unsaved: list[str], text: list[str]) -> str:
    """The unsaved parts as one string, which replaces them at the end of the text's parts as
    well: a long reply is held as one string a flush rather than one per frame."""
    count = len(unsaved)
    if count > 1:
        joined = "".join(unsaved)
        # The same objects (compared by identity first), unless the text was joined since.
        if text[-count:] == unsaved:
            text[-count:] = [joined]
        unsaved[:] = [joined]
    return unsaved[0] if unsaved else ""


class Generation:
    def __init__(self, plan: GenerationPlan, manager: GenerationManager) -> None:
        self.plan = plan
        self.manager = manager
        self.message_id = plan.message_id
        self.conversation_id = plan.conversation_id
        self.status: str = Message.Status.STREAMING
        self.seq = 0
        self.flushed_seq = 0
        self.flushed_at = time.monotonic()
        # Text already sent to watchers, and text received but not sent yet.
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._pending_content: list[str] = []
        self._pending_reasoning: list[str] = []
        # Text sent to watchers and not saved yet: the next flush appends it to the saved text.
        self._unsaved_content: list[str] = []
        self._unsaved_reasoning: list[str] = []
        self._save_whole = False
        self._saving = (0, 0)
        self.usage: upstream_client.Usage | None = None
        self.finish_reason = ""
        self.lava_request_id = ""
        self.chutes_invocation_id = ""
        self.error: UpstreamError | None = None
        # The estimate past which the reply has certainly gone beyond the max_tokens it was
        # reserved for (a provider that ignores it): there the upstream request is closed.
        max_tokens = plan.body.get("max_tokens")
        self._token_limit = (
            max_tokens * prices.MAX_OVERCOUNT + CUT_SLACK_TOKENS
            if isinstance(max_tokens, int) and max_tokens > 0
            else None
        )
        # The reply's own saves that failed in a row (see GenerationManager.flush_once).
        self.save_failures = 0
        self.save_failed = False
        # Whether the upstream answered at all (its response headers arrived).
        self.responded = False
        self.stop_requested = False
        self.shutting_down = False
        self._reasoning_started: float | None = None
        self._reasoning_ended: float | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._emitting = False
        self._pacing = Pacing(manager.load, settings.STREAM_COALESCE_MS / 1000)
        # When the emitter sends the text it was woken for (time.monotonic()).
        self._due = 0.0
        self._reader: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None

    # Text as watchers have seen it.

    def content(self) -> str:
        return _joined(self._content)

    def reasoning(self) -> str:
        return _joined(self._reasoning)

    # Saving progress (the manager's flush).

    def progress(self) -> progress_actions.Progress:
        """The text the next flush saves: what came since the last save, or all of it after a
        save whose outcome is unknown."""
        if self._save_whole:
            content, reasoning = self.content(), self.reasoning()
        else:
            content = _joined_tail(self._unsaved_content, self._content)
            reasoning = _joined_tail(self._unsaved_reasoning, self._reasoning)
        self._saving = (len(self._unsaved_content), len(self._unsaved_reasoning))
        return progress_actions.Progress(
            self.message_id, self.seq, self.flushed_seq, content, reasoning, self._save_whole
        )

    def saved(self, progress: progress_actions.Progress, at: float) -> None:
        # Text sent while the flush ran came after what it saved, and waits for the next one.
        del self._unsaved_content[: self._saving[0]]
        del self._unsaved_reasoning[: self._saving[1]]
        self.flushed_seq = progress.seq
        self.flushed_at = at
        self._save_whole = False

    def save_whole_next(self) -> None:
        self._save_whole = True

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.message_id,
            self.conversation_id,
            self.seq,
            self.content(),
            self.reasoning(),
            self.status,
        )

    # Control.

    def stop(self) -> None:
        """Stop at the user's request: the upstream request is cancelled, the text kept."""
        self.stop_requested = True
        if self._reader is not None:
            self._reader.cancel()

    def fail_saving(self) -> None:
        """End the reply because its text cannot be saved: the upstream request is cancelled,
        and the end is written with whatever text can be."""
        self.save_failed = True
        if self._reader is not None:
            self._reader.cancel()

    def interrupt_for_shutdown(self) -> None:
        self.shutting_down = True
        if self._reader is not None:
            self._reader.cancel()

    # The run.

    async def run(self) -> None:
        self._reader = asyncio.create_task(self._read())
        emitter = asyncio.create_task(self._emit_loop())
        try:
            await asyncio.wait({self._reader})
        finally:
            # Whatever ended the reading, what was received goes out, then the end is saved.
            # The emitter is told to finish rather than cancelled: a frame cancelled halfway
            # through a channel-layer send (Redis) would be lost.
            self._closing.set()
            self._wake.set()
            await emitter
            await self._emit()
            await self._finish()

    async def _read(self) -> None:
        config = config_from_settings()
        events = upstream_client.stream_chat(
            self.plan.body,
            config=config,
            reasoning_model=self.plan.reasoning_model,
            token_limit=self._token_limit,
        )
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, upstream_client.TextDelta):
                        if event.text:
                            if (
                                self._reasoning_started is not None
                                and self._reasoning_ended is None
                            ):
                                self._reasoning_ended = time.monotonic()
                            self._pending_content.append(event.text)
                            await self._queued()
                    elif isinstance(event, upstream_client.ReasoningDelta):
                        if event.text:
                            if self._reasoning_started is None:
                                self._reasoning_started = time.monotonic()
                            self._pending_reasoning.append(event.text)
                            await self._queued()
                    elif isinstance(event, upstream_client.Usage):
                        self.usage = event
                    elif isinstance(event, upstream_client.Finish):
                        self.finish_reason = event.reason or ""
                    elif isinstance(event, upstream_client.RequestIds):
                        self.responded = True
                        self.lava_request_id = event.lava_request_id or ""
                        self.chutes_invocation_id = event.chutes_invocation_id or ""
        except UpstreamError as exc:
            self.error = exc
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("generation %s failed unexpectedly", self.message_id)
            self.error = UpstreamError(
                "upstream_error", "Something went wrong while generating this reply."
            )

    async def _queued(self) -> None:
        """New text is pending: it goes out at once, from here (no task switch), or the emitter
        is told when to send it (`pacing.py` decides)."""
        now = time.monotonic()
        due = self._pacing.arrived(now)
        if self._wake.is_set():
            # A frame is already due: this text goes with it.
            return
        if due is None and not self._emitting:
            await self._emit()
            return
        self._due = now if due is None else due
        self._wake.set()

    async def _emit_loop(self) -> None:
        """Send pending text when it is due."""
        while not self._closing.is_set():
            await self._wake.wait()
            delay = self._due - time.monotonic()
            if delay > 0 and not self._closing.is_set():
                # Wait until it is due, but not past the end of the reply.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
            # Due now: the emitter runs once the reader has taken apart the read that carried
            # the text (it does not yield in between), so the tokens of one read share a frame.
            self._wake.clear()
            await self._emit()

    async def _emit(self) -> None:
        if not self._pending_content and not self._pending_reasoning:
            return
        self._emitting = True
        try:
            await self._send_pending()
        finally:
            self._emitting = False

    async def _send_pending(self) -> None:
        content = "".join(self._pending_content)
        reasoning = "".join(self._pending_reasoning)
        self._pending_content.clear()
        self._pending_reasoning.clear()
        self.seq += 1
        if content:
            self._content.append(content)
            self._unsaved_content.append(content)
        if reasoning:
            self._reasoning.append(reasoning)
            self._unsaved_reasoning.append(reasoning)
        self._pacing.sent(time.monotonic())
        frame = protocol.delta_frame(
            self.conversation_id, self.message_id, self.seq, content, reasoning
        )
        await self.manager.broadcast(
            self.conversation_id, self.message_id, self.seq, "delta", frame
        )

    def _reasoning_ms(self) -> int | None:
        if self._reasoning_started is None:
            return None
        end = self._reasoning_ended or time.monotonic()
        return int((end - self._reasoning_started) * 1000)

    def outcome(self) -> Outcome:
        if self.error is not None or self.save_failed:
            status = Message.Status.ERROR
        elif self.stop_requested:
            status = Message.Status.STOPPED
        elif self.shutting_down:
            status = Message.Status.INTERRUPTED
        else:
            status = Message.Status.COMPLETE
        error_code, error_message = "", ""
        if self.save_failed:
            error_code, error_message = SAVE_FAILED, SAVE_FAILED_MESSAGE
        elif self.error is not None:
            error_code, error_message = self.error.code, self.error.message
        elif status == Message.Status.INTERRUPTED:
            error_code = "interrupted"
            error_message = "The server restarted before this reply was finished."
        usage = self.usage
        if usage is None and not self.responded:
            # The upstream never answered (refused, failed before a response, stopped while
            # waiting): nothing was produced and nothing is billed.
            usage = upstream_client.Usage(prompt_tokens=0, completion_tokens=0, cached_tokens=0)
        return Outcome(
            plan=self.plan,
            status=status,
            content=self.content(),
            reasoning=self.reasoning(),
            seq=self.seq,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else 0,
            finish_reason=self.finish_reason,
            error_code=error_code,
            error_message=error_message,
            lava_request_id=self.lava_request_id,
            chutes_invocation_id=self.chutes_invocation_id,
            reasoning_ms=self._reasoning_ms(),
        )

    async def _finish(self) -> None:
        outcome = self.outcome()
        self.status = outcome.status
        message = await self._write_final(outcome)
        if message is not None:
            frame = done_frame_for(message)
        else:
            # The database stayed away; the reaper will settle the saved partial later.
            frame = protocol.done_frame(
                self.conversation_id,
                self.message_id,
                outcome.status,
                seq=self.seq,
                prompt_tokens=outcome.prompt_tokens or 0,
                completion_tokens=outcome.completion_tokens or 0,
                estimated=outcome.prompt_tokens is None,
                cost=None,
                error=(
                    {"code": outcome.error_code, "message": outcome.error_message}
                    if outcome.error_code
                    else None
                ),
            )
        await self.manager.broadcast(self.conversation_id, self.message_id, self.seq, "done", frame)

    async def _write_final(self, outcome: Outcome) -> Message | None:
        """Write the end; retried while the database is away. Should the end itself be refused
        (a value the database will not take), the text is written with what cannot be stored
        replaced, and failing that the end is written over the text saved so far."""
        fallbacks = [
            _storable(outcome),
            dataclasses.replace(
                outcome,
                status=Message.Status.ERROR,
                error_code=SAVE_FAILED,
                error_message=SAVE_FAILED_MESSAGE,
                keep_saved_text=True,
            ),
        ]
        deadline = time.monotonic() + FINAL_WRITE_DEADLINE
        delay = 0.05
        while True:
            try:
                return await database_sync_to_async(progress_actions.finish_generation)(outcome)
            except TRANSIENT_DATABASE_ERRORS:
                if time.monotonic() + delay > deadline:
                    logger.exception("could not save the end of reply %s", self.message_id)
                    return None
                logger.warning("saving the end of reply %s failed; retrying", self.message_id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:
                if not fallbacks:
                    logger.exception("could not save the end of reply %s", self.message_id)
                    return None
                logger.exception(
                    "saving the end of reply %s was refused; saving what can be", self.message_id
                )
                outcome = fallbacks.pop(0)
                self.status = outcome.status


def _storable(outcome: Outcome) -> Outcome:
    """The outcome with text no database can store (lone UTF-16 surrogates, NUL) replaced by
    U+FFFD, pairs joined."""
    return dataclasses.replace(
        outcome,
        content=clean_text(outcome.content),
        reasoning=clean_text(outcome.reasoning),
    )


def done_frame_for(message: Message) -> dict[str, Any]:
    error = None
    if message.error_code:
        error = {"code": message.error_code, "message": message.error_message}
    return protocol.done_frame(
        message.conversation_id,
        message.pk,
        message.status,
        seq=message.seq,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        estimated=message.usage_estimated,
        cost=message.cost,
        error=error,
        reasoning_ms=message.reasoning_ms,
    )
