"""Generations: each assistant reply runs as its own asyncio task, detached from any socket.

Sockets only watch. A generation reads the upstream stream, coalesces deltas into frames with a
per-message sequence number, hands them to the sockets of this process that watch the
conversation (and, with Redis, to its channel-layer group for other processes), saves its partial
text about once a second, and writes its end once. One `GenerationManager` per process
and event loop owns the running generations, the periodic flush, the reaper, and a control
channel through which any process can stop a generation or ask it for an exact snapshot.
About 500 lines: the manager's loops share its table of running generations; one reply's own
work is in `generation.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from datetime import timedelta
from typing import Any, cast

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.utils import timezone

from chat import attachments, protocol
from chat.actions import progress as progress_actions
from chat.actions import titles
from chat.actions.replies import GenerationPlan
from chat.events import (
    WATCHERS_GROUP,
    control_group,
    conversation_group,
    stop_event,
    watchers_event,
    watchers_question,
)
from chat.models import Message
from chat.upstream import client as upstream_client
from chat.upstream.errors import UpstreamError
from chat.upstream.settings import config_from_settings
from chutesweb.runtime import server_lifecycle

from .accepting import AcceptQueue
from .generation import (
    MAX_SAVE_FAILURES,
    TRANSIENT_DATABASE_ERRORS,
    Generation,
    Snapshot,
    done_frame_for,
)
from .pacing import LoadGauge

logger = logging.getLogger(__name__)

# How often a process tells the others which conversations its sockets watch.
WATCH_ANNOUNCE_SECONDS = 60.0


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
        # Requests accepted in batches when they come in bursts.
        self.accepts = AcceptQueue()
        # Conversations sockets of other processes watch, until when (time.monotonic()): only
        # their deltas go through the layer (see `broadcast`).
        self.watched_elsewhere: dict[int, float] = {}
        # The process's load, which sets how long a reply's tokens may wait to share a frame.
        self.load = LoadGauge()
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
            if self.remote:
                await self.layer.group_add(WATCHERS_GROUP, self.channel_name)
                # The others announce at once, rather than within a minute: until then this
                # process's deltas would not reach their sockets.
                await self.layer.group_send(WATCHERS_GROUP, watchers_question(self.origin))
                self._spawn(self._announce_loop())
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
        if kind == "delta" and not self.is_watched_elsewhere(conversation_id):
            # No other process's socket watches it: a delta through the layer would come back
            # only to this process's own sockets, which drop it. A socket elsewhere that starts
            # watching announces it (or asks this process for a snapshot) before it reads, and a
            # delta missed meanwhile is a gap it resynchronises from; starts, ends and titles
            # always go.
            return
        try:
            await self.layer.group_send(conversation_group(conversation_id), event)
        except Exception:
            # A watcher missing a frame resynchronises from a snapshot; the generation goes on.
            logger.exception("could not fan out %s %s of reply %s", kind, seq, message_id)

    def is_watched_elsewhere(self, conversation_id: int) -> bool:
        until = self.watched_elsewhere.get(conversation_id)
        if until is None:
            return False
        if until < time.monotonic():
            del self.watched_elsewhere[conversation_id]
            return False
        return True

    async def announce(self, conversation_ids: list[int]) -> None:
        """Tell the other processes that sockets of this one watch these conversations."""
        if self.remote and conversation_ids:
            await self.layer.group_send(
                WATCHERS_GROUP, watchers_event(self.origin, conversation_ids)
            )

    async def _announce_loop(self) -> None:
        """Announce again, now and then, every conversation this process's sockets watch: the
        others forget one not announced for WATCH_ANNOUNCE_SECONDS x 3."""
        while True:
            await asyncio.sleep(WATCH_ANNOUNCE_SECONDS)
            try:
                # Group memberships expire (the layer's group_expiry): renewed every time.
                await self.layer.group_add(WATCHERS_GROUP, self.channel_name)
                self._forget_expired()
                await self.announce(sorted(self.local))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("announcing the watched conversations failed; will retry")

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for conversation_id, until in list(self.watched_elsewhere.items()):
            if until < now:
                del self.watched_elsewhere[conversation_id]

    def _watched_from_elsewhere(self, conversation_ids: list[int]) -> None:
        until = time.monotonic() + WATCH_ANNOUNCE_SECONDS * 3
        for conversation_id in conversation_ids:
            self.watched_elsewhere[conversation_id] = until

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
        await self.layer.group_send(control_group(message_id), stop_event(message_id))
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
        if event.get("type") == "gen.watchers":
            conversations = event.get("conversations")
            if event.get("origin") != self.origin and isinstance(conversations, list):
                self._watched_from_elsewhere([c for c in conversations if isinstance(c, int)])
            return
        if event.get("type") == "gen.watchers.ask":
            if event.get("origin") != self.origin:
                await self.announce(sorted(self.local))
            return
        message_id = event.get("message")
        if not isinstance(message_id, int):
            logger.warning("generation control request without a reply id: %r", event.get("type"))
            return
        if event.get("type") == "gen.stop":
            self.stop_local(message_id)
        elif event.get("type") == "gen.snapshot":
            snap = self.local_snapshot(message_id)
            if snap is not None:
                # A socket elsewhere watches the reply: its deltas after the snapshot go to it.
                self._watched_from_elsewhere([snap.conversation_id])
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
