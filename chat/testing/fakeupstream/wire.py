"""HTTP/1.1 on raw asyncio streams, as much of it as the stand-in needs: a request read (with a
chunked body), a JSON or bytes answer, a body sent as chunks of a chosen size, and the watcher
of a client's hang-up stopped cleanly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


async def stop_watching(watcher: asyncio.Task[None]) -> None:
    """Stop the hang-up watcher and wait until it let go of the reader.

    A cancelled task only lets go on its next turn; reading the next request before that
    would find the reader still claimed.
    """
    if not watcher.done():
        watcher.cancel()
        await asyncio.wait([watcher])


async def sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def send_chunk(writer: asyncio.StreamWriter, data: bytes, piece_size: int) -> None:
    if writer.is_closing():
        raise ConnectionResetError("client went away")
    if not piece_size:
        writer.write(b"%x\r\n%b\r\n" % (len(data), data))
        await writer.drain()
        return
    for start in range(0, len(data), piece_size):
        piece = data[start : start + piece_size]
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await writer.drain()
        # Give each piece its own turn of the loop, so that it leaves as its own segment.
        await asyncio.sleep(0)


async def send_json(
    writer: asyncio.StreamWriter,
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
) -> None:
    await send_bytes(writer, status, json.dumps(body, ensure_ascii=False).encode(), headers)


async def send_bytes(
    writer: asyncio.StreamWriter,
    status: int,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(payload)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
    await writer.drain()


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await read_chunked(reader)
    else:
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    return Request(method.upper(), target, parts.path, parse_qs(parts.query), headers, body)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
