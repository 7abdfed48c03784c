"""The chat websocket: authorise, validate, dispatch, send. Generations run elsewhere
(`chat.realtime.engine`); this socket only starts, stops and watches them.

One class for one socket's whole life, about 530 lines: the delivery rule (sequence numbers,
snapshots, resyncs, flow control) reads the socket's state at every step, and split apart its
pieces would pass that state back and forth."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, cast

from channels import DEFAULT_CHANNEL_LAYER
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.sessions import InstanceSessionWrapper
from django.conf import settings
from django.utils import timezone

from chat import errors, protocol
from chat.actions import conversations, titles
from chat.errors import Refused
from chat.events import conversation_group
from chat.models import Message
from chutesweb.runtime import daphne_frames, socket_buffers

from .engine import get_manager
from .generation import Snapshot, done_frame_for
from .watching import WatchList

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

# How long a watch waits for another process to send an exact snapshot before using the
# last saved text instead.
SNAPSHOT_TIMEOUT = 2.0
# Replies whose end this socket has delivered, to drop a late duplicate `done`.
FINISHED_MEMORY = 256
# Close codes (4000-4999 are the application's).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_SLOW = 4408
CLOSE_FLOODING = 4429


class ChatConsumer(AsyncWebsocketConsumer):
    # A socket's own channel only carries other processes' frames and snapshots (Redis). With the
    # in-memory layer this process is the only one, so a socket gets no channel: no queue and
    # no second receiving task per open socket.
    channel_name = ""

    @property
    def channel_layer_alias(self) -> str | None:  # type: ignore[override]  # None: no layer (stub: str)
        return DEFAULT_CHANNEL_LAYER if get_manager().remote else None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accept first so the browser sees our close code rather than a failed handshake.
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        # AuthMiddlewareStack's lazy user, which stands for the account once it is authenticated.
        self.user = cast("User", user)
        # Conversations this socket watches; frames of this process's generations are
        # delivered to it directly, and (with Redis) other processes' through the layer.
        self.watching = WatchList(settings.MAX_WATCHED_CONVERSATIONS)
        # Per reply: the last sequence number this socket delivered.
        self.delivered: dict[int, int] = {}
        # Replies whose snapshot is on its way from another process, with deltas held meanwhile.
        self.held: dict[int, list[dict[str, Any]]] = {}
        self.finished: OrderedDict[int, None] = OrderedDict()
        self.pending_tasks: set[asyncio.Future[None]] = set()
        # Flow control: characters sent, and characters the client says it has received.
        self.sent_chars = 0
        self.acked_chars = 0
        self.closing = False
        self.max_unacked = settings.MAX_UNACKED_CHARS
        self.max_buffered = settings.MAX_SOCKET_BUFFER_BYTES
        self.bucket = FrameBucket(settings.FRAMES_PER_SECOND, settings.FRAME_BURST)
        self.frame_send = _frame_sender(self.base_send)
        # Under daphne, text frames go straight to the connection (chutesweb/runtime).
        self.write_text = daphne_frames.text_writer(self.frame_send)
        # What the connection holds unsent, where the server lets it be known (chutesweb/runtime).
        self.buffered = socket_buffers.write_buffer_probe(self.frame_send)
        self.manager = get_manager()
        await self.manager.ensure_started()
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for conversation_id in list(getattr(self, "watching", ())):
            await self._leave(conversation_id)

    # Client frames.

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        verdict = self.bucket.take()
        if verdict is FrameBucket.REFUSE_QUIETLY:
            return
        if verdict is FrameBucket.CLOSE:
            logger.warning("closing a socket of user %s: frame flood", self.user.pk)
            await self._close(CLOSE_FLOODING)
            return
        request_id = None
        try:
            if verdict is FrameBucket.REFUSE:
                raise Refused(
                    errors.RATE_LIMITED,
                    "Too many frames: slow down. Further frames are ignored for a moment.",
                )
            frame = protocol.parse_client_frame(text_data)
            request_id = getattr(frame, "request_id", None)
            if isinstance(frame, protocol.Ack):
                self.acked_chars = max(self.acked_chars, min(frame.received, self.sent_chars))
            elif isinstance(frame, (protocol.Send, protocol.Regenerate, protocol.Edit)):
                await self.handle_request(frame)
            elif isinstance(frame, protocol.Stop):
                await self.handle_stop(frame)
            elif isinstance(frame, protocol.Watch):
                await self.handle_watch(frame.conversation)
            elif isinstance(frame, protocol.Unwatch):
                await self.handle_unwatch(frame.conversation)
            elif isinstance(frame, protocol.Resync):
                await self.handle_resync(frame.conversation)
            elif isinstance(frame, protocol.Retitle):
                await self.handle_retitle(frame.conversation)
        except Refused as exc:
            await self.send_frame(
                protocol.error_frame(exc.code, exc.message, exc.request_id or request_id)
            )

    async def handle_request(
        self, frame: protocol.Send | protocol.Regenerate | protocol.Edit
    ) -> None:
        """A question, a regenerate or an edit: accepted (or refused) in one transaction, then
        this socket watches the conversation and the reply starts."""
        plan = await self.manager.accepts.accept(self.user, frame)
        # Watch before the generation starts so the sender misses no frame of it. Past the
        # watch limit the conversation watched longest is let go (the page is told), so that
        # sends, replayed ones included, never take a socket past the limit.
        await self._make_room(plan.conversation_id)
        await self._join_remote(plan.conversation_id)
        self._join_local(plan.conversation_id)
        await self.send_frame(
            protocol.accepted_frame(
                plan.request_id,
                plan.conversation_id,
                plan.user_message["id"] if plan.user_message else None,
                plan.message_id,
            )
        )
        if plan.duplicate:
            await self._send_snapshots(plan.conversation_id, only=plan.message_id)
        else:
            await self.manager.start(plan)

    async def handle_stop(self, frame: protocol.Stop) -> None:
        reply = await database_sync_to_async(conversations.owned_reply)(self.user, frame.message)
        if reply.status != Message.Status.STREAMING:
            # Already over: tell this socket how it ended (again, if it saw the end).
            self.finished.pop(reply.pk, None)
            await self._deliver_done(reply.pk, done_frame_for(reply))
            return
        if await self.manager.request_stop(reply.pk):
            return
        if self._orphaned(reply.heartbeat_at):
            await self.manager.interrupt_orphans([reply.pk])

    async def handle_watch(self, conversation_id: int) -> None:
        if conversation_id in self.watching:
            # Already watched: the socket has the snapshots and gets every frame since. Sending
            # them again would let a client make the server write a long reply over and over.
            streaming = await database_sync_to_async(conversations.streaming_ids)(
                self.user, conversation_id
            )
            await self.send_frame(protocol.watching_frame(conversation_id, streaming))
            return
        if self.watching.full:
            raise Refused(
                errors.INVALID_FRAME,
                f"A connection can watch at most {self.watching.limit} "
                "conversations; unwatch one first.",
            )
        # Ownership first: watching someone else's conversation reveals nothing.
        await database_sync_to_async(conversations.owned_conversation)(self.user, conversation_id)
        streaming = await self._send_snapshots(conversation_id)
        await self.send_frame(protocol.watching_frame(conversation_id, streaming))

    async def handle_resync(self, conversation_id: int) -> None:
        """The page saw a gap: exact snapshots of the watched conversation's replies in flight.
        (What it costs the server is bounded by the socket's buffer limit, like every frame.)"""
        if conversation_id not in self.watching:
            await self.handle_watch(conversation_id)
            return
        streaming = await self._send_snapshots(conversation_id)
        await self.send_frame(protocol.watching_frame(conversation_id, streaming))

    async def handle_retitle(self, conversation_id: int) -> None:
        reply_id = await database_sync_to_async(titles.first_exchange_reply)(
            self.user, conversation_id
        )
        # The title frame goes to the conversation's watchers: this socket is one.
        await self._make_room(conversation_id)
        await self._join_remote(conversation_id)
        self._join_local(conversation_id)
        self.manager.spawn(self.manager.write_title(reply_id, again=True))

    async def _make_room(self, conversation_id: int) -> None:
        for oldest in self.watching.to_let_go(conversation_id):
            await self._leave(oldest)
            await self.send_frame({"type": "unwatched", "conversation": oldest})

    async def handle_unwatch(self, conversation_id: int) -> None:
        if conversation_id in self.watching:
            await self._leave(conversation_id)
        await self.send_frame({"type": "unwatched", "conversation": conversation_id})

    async def _join_remote(self, conversation_id: int) -> None:
        """Subscribe to other processes' frames of the conversation (Redis only)."""
        if self.manager.remote and conversation_id not in self.watching.remote:
            await self.channel_layer.group_add(
                conversation_group(conversation_id), self.channel_name
            )
            self.watching.remote.add(conversation_id)
            # Before anything is read: a reply another process starts from now on sends its
            # deltas through the layer.
            await self.manager.announce([conversation_id])

    def _join_local(self, conversation_id: int) -> None:
        self.watching.add(conversation_id)
        self.manager.watch(conversation_id, self)

    async def _leave(self, conversation_id: int) -> None:
        self.watching.discard(conversation_id)
        self.manager.unwatch(conversation_id, self)
        if conversation_id in self.watching.remote:
            self.watching.remote.discard(conversation_id)
            await self.channel_layer.group_discard(
                conversation_group(conversation_id), self.channel_name
            )

    async def _send_snapshots(self, conversation_id: int, only: int | None = None) -> list[int]:
        """Subscribe, then snapshot every in-flight reply, then the live tail follows.

        Other processes' frames are subscribed to before the saved state is read; this
        process's generations are snapshotted in the same step (no await) as the socket starts
        receiving their frames directly. Deltas already in a snapshot are dropped by sequence
        number; deltas after it pass.
        """
        await self._join_remote(conversation_id)
        rows = await database_sync_to_async(conversations.in_flight)(self.user, conversation_id)
        # From here to the snapshots there is no await: no frame can slip in between.
        self._join_local(conversation_id)
        snapshots = {
            snap.message_id: snap
            for snap in self.manager.local_snapshots(conversation_id)
            if only is None or snap.message_id == only
        }
        for snap in snapshots.values():
            self.delivered[snap.message_id] = snap.seq
            # Frames of the reply that come while its snapshot goes out wait for it.
            self.held.setdefault(snap.message_id, [])
        streaming = list(snapshots)
        orphans: list[int] = []
        remote: list[conversations.InFlight] = []
        for row in rows:
            if row.message_id in snapshots or (only is not None and row.message_id != only):
                continue
            if self._orphaned(row.heartbeat_at):
                orphans.append(row.message_id)
            else:
                # Running in another process: hold its deltas until its snapshot arrives.
                self.held.setdefault(row.message_id, [])
                remote.append(row)
                streaming.append(row.message_id)
        for snap in snapshots.values():
            await self._deliver_snapshot(snap)
        for row in remote:
            await self.manager.request_snapshot(row.message_id, self.channel_name)
            asyncio.get_running_loop().call_later(SNAPSHOT_TIMEOUT, self._snapshot_timeout, row)
        if orphans:
            await self.manager.interrupt_orphans(orphans)
        if only is not None and not streaming and not orphans:
            # The replayed request already finished: send how it ended.
            reply = await database_sync_to_async(conversations.owned_reply)(self.user, only)
            self.finished.pop(reply.pk, None)
            await self._deliver_done(reply.pk, done_frame_for(reply))
        return sorted(streaming)

    def _orphaned(self, heartbeat_at: Any) -> bool:
        """A streaming reply no process can be running any more.

        With the in-memory channel layer this process is the only one, so a reply it does not
        run is an orphan of an earlier process. Otherwise its heartbeat must have gone stale.
        """
        if not self.manager.remote or heartbeat_at is None:
            return True
        age = (timezone.now() - heartbeat_at).total_seconds()
        return age > settings.STREAM_STALE_SECONDS

    def _snapshot_timeout(self, row: conversations.InFlight) -> None:
        if row.message_id in self.held:
            task = asyncio.ensure_future(self._fallback_snapshot(row))
            self.pending_tasks.add(task)
            task.add_done_callback(self.pending_tasks.discard)

    async def _fallback_snapshot(self, row: conversations.InFlight) -> None:
        if row.message_id not in self.held:
            return
        logger.warning("no live snapshot of reply %s; using the saved text", row.message_id)
        await self.chat_snapshot(
            {
                "message": row.message_id,
                "conversation": row.conversation_id,
                "seq": row.seq,
                "content": row.content,
                "reasoning": row.reasoning,
                "status": row.status,
            }
        )

    async def _deliver_snapshot(self, snap: Snapshot) -> None:
        """Send a snapshot, in pieces when it is long; the reply's frames that arrive
        meanwhile (and any held for it before) follow it, in order."""
        self.delivered[snap.message_id] = snap.seq
        self.held.setdefault(snap.message_id, [])
        for frame in snapshot_frames(snap):
            await self.send_frame(frame)
        for later in self.held.pop(snap.message_id, []):
            await self.deliver(later)

    async def _deliver_done(self, message_id: int, frame: dict[str, Any] | str) -> None:
        if message_id in self.finished:
            return
        self.finished[message_id] = None
        while len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)
        self.delivered.pop(message_id, None)
        self.held.pop(message_id, None)
        await self.send_text(frame if isinstance(frame, str) else protocol.encode(frame))

    # Frames of generations.

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections() on the ORM's thread before every handler: a
        # thread round trip per frame per socket, queued behind every database call of the
        # process. Generation frames and snapshots touch no database.
        if message["type"] == "chat.stream":
            await self.chat_stream(message)
        elif message["type"] == "chat.snapshot":
            await self.chat_snapshot(message)
        else:
            await super().dispatch(message)

    async def chat_stream(self, event: dict[str, Any]) -> None:
        """A frame from another process's generation, through the channel layer."""
        if event.get("origin") == self.manager.origin:
            return  # this process's frames arrive directly (`deliver`)
        await self.deliver(event)

    async def deliver(self, event: dict[str, Any]) -> None:
        """A frame of a generation of a conversation this socket watches."""
        message_id: int = event["message"]
        kind: str = event["kind"]
        if kind == "delta":
            await self._deliver_delta(message_id, event)
        elif kind == "started":
            # Deltas of the reply follow from 1: one missing is a gap (see `_deliver_delta`).
            self.delivered.setdefault(message_id, 0)
            await self.send_text(event["frame"])
        elif kind == "done":
            if message_id in self.held:
                self.held[message_id].append(event)
            else:
                await self._deliver_done(message_id, event["frame"])
        else:
            await self.send_text(event["frame"])

    async def _deliver_delta(self, message_id: int, event: dict[str, Any]) -> None:
        if message_id in self.held:
            self.held[message_id].append(event)
            return
        if message_id in self.finished:
            return
        seq: int = event["seq"]
        last = self.delivered.get(message_id)
        if last is not None and seq <= last:
            return  # already in the snapshot this socket got
        if last is not None and seq > last + 1:
            # A frame was lost (a full channel): resynchronise from an exact snapshot.
            await self._resync(message_id)
            return
        self.delivered[message_id] = seq
        await self.send_text(event["frame"])

    async def _resync(self, message_id: int) -> None:
        local = self.manager.local_snapshot(message_id)
        if local is not None:
            await self._deliver_snapshot(local)
        else:
            self.held.setdefault(message_id, [])
            await self.manager.request_snapshot(message_id, self.channel_name)
            asyncio.get_running_loop().call_later(
                SNAPSHOT_TIMEOUT, self._resync_timeout, message_id
            )

    def _resync_timeout(self, message_id: int) -> None:
        if message_id in self.held:
            task = asyncio.ensure_future(self._give_up_resync(message_id))
            self.pending_tasks.add(task)
            task.add_done_callback(self.pending_tasks.discard)

    async def _give_up_resync(self, message_id: int) -> None:
        """No exact snapshot came (the reply ended in its process meanwhile, say): its frames
        go through again, and its end, held meanwhile, goes out; the page re-reads the saved
        reply when an end comes with text it did not see."""
        held = self.held.pop(message_id, None)
        if held is None:
            return
        logger.warning("no snapshot of reply %s came for a resync", message_id)
        self.delivered.pop(message_id, None)
        for event in held:
            if event["kind"] == "done":
                await self._deliver_done(message_id, event["frame"])

    async def chat_snapshot(self, event: dict[str, Any]) -> None:
        """An exact snapshot from the process running a generation."""
        message_id: int = event["message"]
        if message_id not in self.held:
            return  # a late answer: this socket already has one
        await self._deliver_snapshot(
            Snapshot(
                message_id,
                event["conversation"],
                event["seq"],
                event["content"],
                event["reasoning"],
                event["status"],
            )
        )

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send_text(protocol.encode(frame))

    async def send_text(self, text: str) -> None:
        """Send a frame unless the client has fallen too far behind: a socket that does not
        read (or acknowledge) is dropped, not the generation and not the other watchers.

        Behind means: its connection holds more than MAX_SOCKET_BUFFER_BYTES that the kernel
        has not taken (what the server really buffers for it, whatever the client says), or
        it has acknowledged less than what was sent minus MAX_UNACKED_CHARS.
        """
        if self.closing:
            return
        self.sent_chars += len(text)
        if self.sent_chars - self.acked_chars > self.max_unacked:
            logger.warning("closing a socket of user %s: the client is not reading", self.user.pk)
            await self._close(CLOSE_TOO_SLOW)
            return
        if self.buffered is not None and self.buffered() > self.max_buffered:
            logger.warning(
                "closing a socket of user %s: its connection holds %d unsent bytes",
                self.user.pk,
                self.buffered(),
            )
            await self._close(CLOSE_TOO_SLOW)
            return
        if self.write_text is None or not self.write_text(text):
            await self.frame_send({"type": "websocket.send", "text": text})

    async def _close(self, code: int) -> None:
        self.closing = True
        await self.close(code=code)


def _frame_sender(send: Any) -> Any:
    """The send for this socket's frames, past the session middleware when it is in the way.

    Channels' session middleware wraps every send to save the session on an HTTP response; for
    each websocket frame it only reads the session's state and passes the frame on. Frames go
    to the server's own send when the wrapper would never act on them.
    """
    wrapper = getattr(send, "__self__", None)
    if (
        isinstance(wrapper, InstanceSessionWrapper)
        and "websocket.send" not in wrapper.save_message_types
        and "websocket.send" not in wrapper.cookie_response_message_types
    ):
        return wrapper.real_send
    return send


def snapshot_frames(snap: Snapshot) -> list[dict[str, Any]]:
    return protocol.snapshot_frames(
        snap.conversation_id, snap.message_id, snap.seq, snap.content, snap.reasoning, snap.status
    )


class FrameBucket:
    """A token bucket per socket: a burst of frames is fine, a sustained flood is not."""

    ACCEPT = "accept"
    REFUSE = "refuse"  # answer once with rate_limited
    REFUSE_QUIETLY = "refuse quietly"
    CLOSE = "close"

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.refused = 0

    def take(self) -> str:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return self.ACCEPT
        self.refused += 1
        if self.refused > 4 * self.burst:
            return self.CLOSE
        return self.REFUSE if self.refused == 1 else self.REFUSE_QUIETLY
