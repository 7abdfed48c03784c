"""Generations: each assistant reply runs as its own asyncio task, detached from any socket.

Sockets only watch. A generation reads the upstream stream, coalesces deltas into frames with a
per-message sequence number, hands them to the sockets of this process that watch the
conversation (and, with Redis, to its channel-layer group for other processes), saves its partial
text about once a second, and writes its end once. One `GenerationManager` per process
and event loop owns the running generations, the periodic flush, the reaper, and a control
channel through which any process can stop a generation or ask it for an exact snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from chutesweb.runtime import server_lifecycle

from . import attachments, protocol
from .actions import progress as progress_actions
from .actions import titles
from .actions.progress import Outcome
from .actions.replies import GenerationPlan
from .billing import prices
from .models import Message
from .upstream import client as upstream_client
from .upstream.errors import UpstreamError
from .upstream.settings import config_from_settings
from .upstream.text import clean_text

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


def conversation_group(conversation_id: int) -> str:
    return f"conv.{conversation_id}"


def control_group(message_id: int) -> str:
    return f"gen.{message_id}"


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
        self._window = settings.STREAM_COALESCE_MS / 1000
        self._last_emit = 0.0
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
        """New text is pending: a token after a quiet window goes out at once, from here
        (no task switch); tokens closer together are left to the emitter to coalesce."""
        if (
            not self._emitting
            and not self._wake.is_set()
            and asyncio.get_running_loop().time() - self._last_emit >= self._window
        ):
            await self._emit()
        elif not self._wake.is_set():
            self._wake.set()

    async def _emit_loop(self) -> None:
        """Send pending text at most once per coalescing window."""
        loop = asyncio.get_running_loop()
        while not self._closing.is_set():
            await self._wake.wait()
            delay = self._last_emit + self._window - loop.time()
            if delay > 0 and not self._closing.is_set():
                # Sleep out the window, but not past the end of the reply.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
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
        self._last_emit = asyncio.get_running_loop().time()
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


class GenerationManager:
    """The running generations of this process and event loop."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        # With the in-memory layer this is the only process; otherwise (Redis) frames also go
        # through the layer to the sockets of other processes.
        self.remote = not isinstance(layer, InMemoryChannelLayer)
        # Marks this process's frames on the layer, so its own sockets skip them there.
        self.origin = uuid.uuid4().hex
        self.generations: dict[int, Generation] = {}
        # Sockets of this process by the conversation they watch: frames go to them directly,
        # without a channel-layer hop per frame per socket.
        self.local: dict[int, set[Any]] = {}
        self.channel_name = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._start_lock = asyncio.Lock()
        # Replies left `streaming` before this moment cannot be this manager's own.
        self.created_at = timezone.now()

    async def ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            # The default prefix: channels_redis receives all of a process's channels through
            # one shared list, and a channel with another prefix would starve the others.
            self.channel_name = await self.layer.new_channel()
            await self._settle_orphans()
            self._spawn(self._control_loop())
            self._spawn(self._flush_loop())
            self._spawn(self._reaper_loop())
            # Under daphne, replies are finished before the reactor stops (uvicorn: lifespan).
            server_lifecycle.before_server_exit(
                lambda: self.shutdown(grace=settings.SHUTDOWN_GRACE_SECONDS)
            )
            self._started = True

    async def _settle_orphans(self) -> None:
        """Settle, at once, the replies an earlier run of this process left `streaming` (a
        crash or a kill): their reservations are released and nobody waits for a spinner.

        Alone (the in-memory layer) every such reply is an orphan. With several processes only
        the ones marked with this process's WORKER_NAME are; without a name, the reaper settles
        them once their heartbeat is stale (it runs now too, and then periodically).
        """
        if self.remote and not settings.WORKER_NAME:
            return
        worker = settings.WORKER_NAME if self.remote else None
        try:
            ended = await database_sync_to_async(progress_actions.settle_orphans)(
                self.created_at, worker
            )
        except Exception:
            logger.exception("could not settle the replies an earlier run left streaming")
            return
        if ended:
            logger.info("settled %d replies an earlier run left streaming", len(ended))
        await self._announce(ended)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run `coro` as a task of this manager (cancelled at shutdown, kept referenced)."""
        return self._spawn(coro)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self, plan: GenerationPlan) -> Generation:
        await self.ensure_started()
        generation = Generation(plan, self)
        self.generations[plan.message_id] = generation
        await self.layer.group_add(control_group(plan.message_id), self.channel_name)
        started = protocol.started_frame(
            plan.conversation_id, plan.message_id, plan.user_message, plan.model_id
        )
        await self.broadcast(plan.conversation_id, plan.message_id, 0, "started", started)
        generation.task = self._spawn(self._run(generation))
        return generation

    async def _run(self, generation: Generation) -> None:
        try:
            await generation.run()
            if (
                generation.plan.wants_title
                and generation.status == Message.Status.COMPLETE
                and settings.AUTO_TITLES
            ):
                self._spawn(self.write_title(generation.message_id))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never left `streaming`: the reply ends with the text saved so far.
            logger.exception("reply %s failed unexpectedly", generation.message_id)
            await self._abandon(generation)
        finally:
            self.generations.pop(generation.message_id, None)
            try:
                await self.layer.group_discard(
                    control_group(generation.message_id), self.channel_name
                )
            except Exception:
                logger.warning("could not leave control group of %s", generation.message_id)

    async def _abandon(self, generation: Generation) -> None:
        try:
            ended = await database_sync_to_async(progress_actions.interrupt)(
                [generation.message_id]
            )
        except Exception:
            logger.exception("could not end reply %s", generation.message_id)
            return
        for message in ended:
            await self.broadcast(
                message.conversation_id, message.pk, message.seq, "done", done_frame_for(message)
            )

    def watch(self, conversation_id: int, consumer: Any) -> None:
        self.local.setdefault(conversation_id, set()).add(consumer)

    def unwatch(self, conversation_id: int, consumer: Any) -> None:
        watchers = self.local.get(conversation_id)
        if watchers is not None:
            watchers.discard(consumer)
            if not watchers:
                del self.local[conversation_id]

    def local_snapshots(self, conversation_id: int) -> list[Snapshot]:
        return [
            g.snapshot() for g in self.generations.values() if g.conversation_id == conversation_id
        ]

    async def broadcast(
        self,
        conversation_id: int,
        message_id: int,
        seq: int,
        kind: str,
        frame: dict[str, Any] | str,
    ) -> None:
        """A frame (or a frame already encoded) to every socket watching the conversation, in
        this process and others."""
        event = {
            "type": "chat.stream",
            "message": message_id,
            "seq": seq,
            "kind": kind,
            "frame": frame if isinstance(frame, str) else protocol.encode(frame),
            "origin": self.origin,
        }
        for consumer in tuple(self.local.get(conversation_id, ())):
            try:
                await consumer.deliver(event)
            except Exception:
                # One broken socket must not stop the reply or its other watchers.
                logger.exception("could not deliver %s %s of reply %s", kind, seq, message_id)
                self.unwatch(conversation_id, consumer)
        if not self.remote:
            return
        try:
            await self.layer.group_send(conversation_group(conversation_id), event)
        except Exception:
            # A watcher missing a frame resynchronises from a snapshot; the generation goes on.
            logger.exception("could not fan out %s %s of reply %s", kind, seq, message_id)

    async def write_title(self, message_id: int, *, again: bool = False) -> str | None:
        """Title a conversation from its first exchange (billed like any reply); once, unless
        the user asks `again`."""
        plan = await database_sync_to_async(titles.plan_title)(message_id, again=again)
        if plan is None:
            return None
        parts: list[str] = []
        thought: list[str] = []
        usage: upstream_client.Usage | None = None
        lava_request_id = ""
        events = upstream_client.stream_chat(
            plan.body,
            config=config_from_settings(),
            reasoning_model=plan.reasoning_model,
        )
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, upstream_client.TextDelta):
                        parts.append(event.text)
                    elif isinstance(event, upstream_client.ReasoningDelta):
                        thought.append(event.text)
                    elif isinstance(event, upstream_client.Usage):
                        usage = event
                    elif isinstance(event, upstream_client.RequestIds):
                        lava_request_id = event.lava_request_id or ""
        except UpstreamError as exc:
            # The first line of the question stays the title; what was used is still billed.
            logger.info("title for conversation %s failed: %s", plan.conversation_id, exc.code)
        title = await database_sync_to_async(titles.finish_title)(
            plan,
            "".join(parts),
            "".join(thought),
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            lava_request_id,
        )
        if title:
            await self.broadcast(
                plan.conversation_id,
                0,
                0,
                "title",
                protocol.title_frame(plan.conversation_id, title),
            )
        return title

    def local_snapshot(self, message_id: int) -> Snapshot | None:
        generation = self.generations.get(message_id)
        return generation.snapshot() if generation else None

    def stop_local(self, message_id: int) -> bool:
        generation = self.generations.get(message_id)
        if generation is None:
            return False
        generation.stop()
        return True

    async def request_stop(self, message_id: int) -> bool:
        """Stop a generation wherever it runs. True when it runs in this process."""
        if self.stop_local(message_id):
            return True
        await self.layer.group_send(
            control_group(message_id), {"type": "gen.stop", "message": message_id}
        )
        return False

    async def request_snapshot(self, message_id: int, reply_to: str) -> None:
        """Ask the process running a generation to send its snapshot to `reply_to`."""
        await self.layer.group_send(
            control_group(message_id),
            {"type": "gen.snapshot", "message": message_id, "reply_to": reply_to},
        )

    async def _control_loop(self) -> None:
        while True:
            try:
                event = await self.layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("generation control channel failed; retrying")
                await asyncio.sleep(1)
                continue
            try:
                await self._control(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad or undeliverable request must not end the channel for every reply.
                logger.exception("generation control request %r failed", event.get("type"))

    async def _control(self, event: dict[str, Any]) -> None:
        message_id = event.get("message")
        if not isinstance(message_id, int):
            logger.warning("generation control request without a reply id: %r", event.get("type"))
            return
        if event.get("type") == "gen.stop":
            self.stop_local(message_id)
        elif event.get("type") == "gen.snapshot":
            snap = self.local_snapshot(message_id)
            if snap is not None:
                await self.layer.send(event["reply_to"], snapshot_event(snap))

    async def _flush_loop(self) -> None:
        """Save the running replies' partial text about once a second, for good: a failure is
        logged and contained (see `flush_once`), and the next tick tries again."""
        while True:
            await asyncio.sleep(settings.STREAM_FLUSH_SECONDS)
            try:
                await self.flush_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("saving partial replies failed; will retry")

    async def flush_once(self) -> None:
        """Save what the running replies received since their last save, with a heartbeat.

        All replies go in one transaction. When it fails for a reason other than the database
        being away (a value one reply carries that the database refuses, say), each reply is
        saved on its own, so one reply cannot stop the others from being saved; a reply whose
        own save keeps failing is ended (`error`) with the text that could be saved.
        """
        now = time.monotonic()
        saving: list[tuple[Generation, progress_actions.Progress]] = []
        beating: list[Generation] = []
        for generation in list(self.generations.values()):
            if generation.status != Message.Status.STREAMING:
                continue
            if generation.seq > generation.flushed_seq:
                saving.append((generation, generation.progress()))
            elif now - generation.flushed_at >= settings.STREAM_HEARTBEAT_SECONDS:
                beating.append(generation)
        if not saving and not beating:
            return
        updates = [progress for _, progress in saving]
        beats = [generation.message_id for generation in beating]
        try:
            refused = await database_sync_to_async(progress_actions.flush_progress)(updates, beats)
        except TRANSIENT_DATABASE_ERRORS:
            # The text stays in memory and goes out with the next flush or the final write.
            logger.warning("saving partial replies failed; will retry", exc_info=True)
            return
        except Exception:
            logger.exception(
                "saving %d partial replies together failed; saving each alone", len(updates)
            )
            await self._flush_each(saving, beating, now)
            return
        for generation, progress in saving:
            self._saved(generation, progress, refused, now)
        for generation in beating:
            generation.flushed_at = now

    async def _flush_each(
        self,
        saving: list[tuple[Generation, progress_actions.Progress]],
        beating: list[Generation],
        now: float,
    ) -> None:
        for generation, progress in saving:
            try:
                refused = await database_sync_to_async(progress_actions.flush_progress)(
                    [progress], []
                )
            except TRANSIENT_DATABASE_ERRORS:
                logger.warning("saving reply %s failed; will retry", generation.message_id)
                continue
            except Exception:
                generation.save_failures += 1
                logger.exception(
                    "saving reply %s failed (%d in a row)",
                    generation.message_id,
                    generation.save_failures,
                )
                if generation.save_failures >= MAX_SAVE_FAILURES:
                    generation.fail_saving()
                continue
            self._saved(generation, progress, refused, now)
        if beating:
            try:
                await database_sync_to_async(progress_actions.flush_progress)(
                    [], [generation.message_id for generation in beating]
                )
            except Exception:
                logger.warning("heartbeats failed; will retry", exc_info=True)
            else:
                for generation in beating:
                    generation.flushed_at = now

    @staticmethod
    def _saved(
        generation: Generation, progress: progress_actions.Progress, refused: set[int], now: float
    ) -> None:
        generation.save_failures = 0
        if generation.message_id in refused:
            logger.warning("reply %s: saved text out of step; saving it whole", progress.message_id)
            generation.save_whole_next()
        else:
            generation.saved(progress, now)

    async def _reaper_loop(self) -> None:
        while True:
            try:
                await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reaper failed")
            try:
                await self.remove_unsent_images()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("removing images never sent failed")
            await asyncio.sleep(settings.REAPER_INTERVAL_SECONDS)

    async def remove_unsent_images(self) -> int:
        """Remove images uploaded and never sent (a closed tab) once UNATTACHED_IMAGE_SECONDS
        old: they count against the user's image storage and nobody can see them."""
        removed = await database_sync_to_async(attachments.remove_unattached)(
            attachments.unattached_cutoff()
        )
        if removed:
            logger.info("removed %d images never sent", removed)
        return removed

    async def reap(self) -> list[int]:
        """Mark replies whose heartbeat went stale `interrupted` and tell their watchers."""
        cutoff = timezone.now() - timedelta(seconds=settings.STREAM_STALE_SECONDS)
        messages = await database_sync_to_async(progress_actions.interrupt)(stale_before=cutoff)
        return await self._announce(messages)

    async def interrupt_orphans(self, message_ids: list[int]) -> list[int]:
        """Interrupt replies no process runs any more (known orphans, not merely stale)."""
        messages = await database_sync_to_async(progress_actions.interrupt)(message_ids)
        return await self._announce(messages)

    async def _announce(self, messages: list[Message]) -> list[int]:
        for message in messages:
            if message.pk in self.generations:
                continue
            logger.info("reply %s marked interrupted", message.pk)
            await self.broadcast(
                message.conversation_id, message.pk, message.seq, "done", done_frame_for(message)
            )
        return [m.pk for m in messages]

    async def shutdown(self, grace: float = 10.0) -> None:
        """Interrupt every running generation and wait (bounded) for their final writes."""
        running = [g for g in self.generations.values() if g.task is not None]
        if running:
            logger.info("interrupting %d running replies before exit", len(running))
        for generation in running:
            generation.interrupt_for_shutdown()
        tasks = [g.task for g in running if g.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in list(self._tasks):
            if task not in tasks:
                task.cancel()


def snapshot_event(snap: Snapshot) -> dict[str, Any]:
    return {
        "type": "chat.snapshot",
        "message": snap.message_id,
        "conversation": snap.conversation_id,
        "seq": snap.seq,
        "content": snap.content,
        "reasoning": snap.reasoning,
        "status": snap.status,
    }


_managers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GenerationManager] = (
    weakref.WeakKeyDictionary()
)


def _channel_layer() -> BaseChannelLayer:
    # The settings always name a default layer (in memory, or Redis), so there is one.
    return cast(BaseChannelLayer, get_channel_layer())


def get_manager() -> GenerationManager:
    """The manager of the running event loop (one per process in a server)."""
    loop = asyncio.get_running_loop()
    manager = _managers.get(loop)
    if manager is None:
        manager = GenerationManager(_channel_layer())
        _managers[loop] = manager
    return manager


def request_stop_from_sync(message_id: int) -> None:
    """Stop a generation from synchronous code (an HTTP view), wherever it runs."""
    async_to_sync(_channel_layer().group_send)(
        control_group(message_id), {"type": "gen.stop", "message": message_id}
    )
