"""A test client for the chat websocket, through the real ASGI stack (origin check, session)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from chat.models import Charge, Conversation, Message
from chat.testing.fakeupstream import FakeUpstream, expected_text
from chutesweb.asgi import application

ORIGIN = "http://127.0.0.1:8000"


@database_sync_to_async
def session_cookie(user: Any) -> str:
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"sessionid={session.session_key}"


def request_id() -> str:
    return uuid.uuid4().hex


class Socket:
    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.received: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.communicator.send_to(text_data=json.dumps(frame))

    async def send_raw(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        frame = json.loads(await self.communicator.receive_from(timeout=timeout))
        self.received.append(frame)
        return frame

    async def recv_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> list[dict[str, Any]]:
        """Frames up to and including the first that matches."""
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                frames.append(frame)
                if predicate(frame):
                    return frames

    async def done(self, message: int | None = None, timeout: float = 15) -> list[dict[str, Any]]:
        return await self.recv_until(
            lambda f: f["type"] == "done" and (message is None or f["message"] == message),
            timeout,
        )

    async def nothing_more(self, timeout: float = 0.3) -> bool:
        return await self.communicator.receive_nothing(timeout=timeout)

    async def close(self) -> None:
        await self.communicator.disconnect()


async def connect(user: Any | None, *, origin: str | None = ORIGIN) -> tuple[bool, Any, Socket]:
    # The handshake goes to the site the Origin names (the browser's case).
    headers: list[tuple[bytes, bytes]] = [(b"host", b"127.0.0.1:8000")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if user is not None:
        headers.append((b"cookie", (await session_cookie(user)).encode()))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return connected, code, Socket(communicator)


async def open_socket(user: Any) -> Socket:
    connected, code, socket = await connect(user)
    assert connected, f"handshake refused ({code})"
    return socket


def send_frame(
    content: str, *, model: str, conversation: int | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "send",
        "request_id": extra.pop("request_id", request_id()),
        "conversation": conversation,
        "model": model,
        "content": content,
        **extra,
    }


def text_of(frames: list[dict[str, Any]], message: int) -> str:
    """The reply text a client builds from a snapshot and the deltas after it."""
    text = ""
    last_seq = None
    for frame in frames:
        if frame.get("message") != message:
            continue
        if frame["type"] == "snapshot":
            text = frame["content"]
            last_seq = frame["seq"]
        elif frame["type"] == "delta":
            assert last_seq is None or frame["seq"] == last_seq + 1, (last_seq, frame["seq"])
            last_seq = frame["seq"]
            text += frame.get("content", "")
    return text


MODEL = "deepseek-ai/DeepSeek-V3-0324"


@database_sync_to_async
def message(pk: int) -> Message:
    return Message.objects.get(pk=pk)


@database_sync_to_async
def counts() -> tuple[int, int, int]:
    return Conversation.objects.count(), Message.objects.count(), Charge.objects.count()


def streamed(fake: FakeUpstream) -> str:
    """The answer the stand-in streamed for its last request."""
    entry = fake.log[-1]
    return expected_text(entry.script, entry.body["messages"])


async def send_and_accept(socket: Socket, content: str, **extra: Any) -> dict[str, Any]:
    frame = send_frame(content, model=extra.pop("model", MODEL), **extra)
    await socket.send(frame)
    accepted = await socket.recv()
    assert accepted["type"] == "accepted", accepted
    assert accepted["request_id"] == frame["request_id"]
    return accepted
