"""The chat-completions endpoint: a request's script chosen, then the reply served whole or
streamed as SSE on an open-loop schedule, with the faults a script asks for."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import time
import uuid
from http import HTTPStatus
from typing import Any

from chat.testing.fakeupstream.errors import ERROR_LINE, error_body
from chat.testing.fakeupstream.script import (
    Plan,
    Script,
    ScriptError,
    Token,
    count_prompt_tokens,
    directive,
    effective_script,
    make_script,
    plan_reply,
)
from chat.testing.fakeupstream.state import LogEntry, State
from chat.testing.fakeupstream.wire import (
    Request,
    send_bytes,
    send_chunk,
    sleep_until,
    stop_watching,
)


class ChatCompletions(State):
    def _take_script(self, messages: list[Any], raw_body: bytes) -> tuple[Script, int | None]:
        """The script for this request, and the status to fail with (None to serve it)."""
        with self._lock:
            default = self._default
            if self._queue:
                queued = self._queue[0]
                base = make_script(default, **(directive(messages) or {}))
                script = make_script(base, **queued.fields)
                if queued.failures_left > 0:
                    queued.failures_left -= 1
                    return script, script.error_status
                self._queue.popleft()
                return script, None if script.fail_times else script.error_status
            script = effective_script(None, messages, default=default)
            status = script.error_status
            if status is not None and script.fail_times:
                # Retries resend the same body: count attempts per body.
                key = hashlib.sha256(raw_body).hexdigest()
                seen = self._attempts.get(key, 0)
                self._attempts[key] = seen + 1
                if seen >= script.fail_times:
                    status = None
            return script, status

    async def _chat(
        self,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        *,
        via_forward: bool,
    ) -> bool:
        try:
            body = json.loads(request.body)
        except ValueError:
            return await self._reply(writer, entry, 400, {"detail": "Invalid JSON body"})
        if not isinstance(body, dict):
            return await self._reply(writer, entry, 400, {"detail": "Body must be an object"})
        entry.body = body
        model = body.get("model")
        if not isinstance(model, str):
            model = ""
        entry.model = model
        entry.stream = bool(body.get("stream"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return await self._reply(writer, entry, 400, {"detail": "messages must not be empty"})
        try:
            script, status = self._take_script(messages, request.body)
        except ScriptError as exc:
            return await self._reply(writer, entry, 400, {"detail": f"fake directive: {exc}"})
        entry.script = script
        if status is not None:
            headers = {}
            if script.retry_after is not None:
                headers["retry-after"] = f"{script.retry_after:g}"
            body_out = error_body(
                status, via_forward=via_forward, model=model, detail=script.detail
            )
            return await self._reply(writer, entry, status, body_out, headers)
        with self._lock:
            known = self._find_model(model)
        if self.strict_models and known is None:
            return await self._reply(
                writer, entry, 404, error_body(404, via_forward=False, model=model)
            )
        features = known.get("supported_features") if known else None
        reasoning_model = isinstance(features, list) and "reasoning" in features
        plan = plan_reply(script, messages, reasoning_model=reasoning_model)
        entry.prompt_tokens = count_prompt_tokens(messages)
        entry.invocation_id = str(uuid.uuid4())
        headers = {"x-chutes-invocationid": entry.invocation_id}
        if via_forward:
            entry.request_id = f"req_{uuid.uuid4().hex}"
            headers["x-lava-request-id"] = entry.request_id
        try:
            if entry.stream:
                return await self._stream(reader, writer, entry, script, plan, headers)
            return await self._complete(writer, entry, script, plan, headers)
        finally:
            if via_forward and entry.status == HTTPStatus.OK:
                self._record(entry)

    def _usage(self, entry: LogEntry, script: Script, completion: int) -> dict[str, Any]:
        numbers = script.usage if isinstance(script.usage, dict) else {}
        prompt = int(numbers.get("prompt_tokens", entry.prompt_tokens))
        completion = int(numbers.get("completion_tokens", completion))
        cached = int(numbers.get("cached_tokens", 0))
        entry.prompt_tokens, entry.completion_tokens = prompt, completion
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    async def _complete(
        self,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        script: Script,
        plan: Plan,
        headers: dict[str, str],
    ) -> bool:
        await asyncio.sleep(script.ttft_ms / 1000 + max(0, len(plan.tokens) - 1) * script.interval)
        if script.raw is not None:
            entry.status = 200
            entry.outcome = "complete"
            await send_bytes(writer, 200, b"".join(script.raw), headers)
            return True
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        mode = script.reasoning_mode
        if plan.reasoning:
            if mode in ("reasoning_content", "reasoning"):
                message[mode] = plan.reasoning
            else:
                opening = "<think>\n" if mode == "think" else ""
                message["content"] = f"{opening}{plan.reasoning}\n</think>\n\n{plan.text}"
        entry.tokens_sent = len(plan.tokens)
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": entry.model,
            "choices": [{"index": 0, "message": message, "finish_reason": script.finish_reason}],
            "usage": self._usage(entry, script, len(plan.tokens)),
        }
        if script.usage is False:
            del body["usage"]
        entry.outcome = "complete"
        return await self._reply(writer, entry, 200, body, headers)

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        script: Script,
        plan: Plan,
        headers: dict[str, str],
    ) -> bool:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        watcher = loop.create_task(_watch(reader, task, entry))
        eol = "\r\n" if script.crlf else "\n"
        self._active += 1
        entry.outcome = "streaming"
        self._changed()
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        fault = script.fault_at(len(plan.tokens))
        # Only the delta changes from chunk to chunk; benchmarks stream thousands at once.
        marker = f"delta-{uuid.uuid4().hex}"
        head_json, _, tail_json = json.dumps(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": entry.model,
                "choices": [{"index": 0, "delta": marker, "logprobs": None, "finish_reason": None}],
                "usage": None,
            },
            ensure_ascii=False,
        ).partition(f'"{marker}"')
        try:
            # Like Chutes, headers leave only when the first token is ready.
            first_due = loop.time() + script.ttft_ms / 1000
            await sleep_until(loop, first_due)
            entry.status = 200
            head = [
                "HTTP/1.1 200 OK",
                "content-type: text/event-stream; charset=utf-8",
                "cache-control: no-cache",
                "transfer-encoding: chunked",
                *(f"{name}: {value}" for name, value in headers.items()),
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            if script.raw is not None:
                return await self._send_raw(writer, entry, script, eol, watcher, first_due)
            lateness = 0.0
            for index, token in enumerate(plan.tokens):
                if index == fault:
                    return await self._fault(writer, entry, script, eol, watcher)
                # Open loop: token i is due at a fixed time, however slowly the client reads.
                due = first_due + index * script.interval
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)
                    now = loop.time()
                lateness = max(lateness, now - due)
                entry.max_lateness_ms = lateness * 1000
                text = token.text
                if script.stamp and token.kind == "answer":
                    text = f"⟦{index}:{time.monotonic_ns()}⟧ "
                data = ""
                if script.ping_every and index and index % script.ping_every == 0:
                    data = f": ping{eol}{eol}"
                delta = json.dumps(_delta(plan, script, index, token, text), ensure_ascii=False)
                data += f"data: {head_json}{delta}{tail_json}{eol}{eol}"
                await send_chunk(writer, data.encode(), script.chunk_bytes)
                entry.tokens_sent += 1
                self._changed()
            if fault is not None:
                return await self._fault(writer, entry, script, eol, watcher)
            finish = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": entry.model,
                "choices": [
                    {
                        "index": 0,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": script.finish_reason,
                    }
                ],
                "usage": None,
            }
            data = f"data: {json.dumps(finish)}{eol}{eol}"
            usage = self._usage(entry, script, entry.tokens_sent)
            if script.usage is not False:
                usage_chunk = {
                    "id": chunk_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": entry.model,
                    "choices": [],
                    "usage": usage,
                }
                data += f"data: {json.dumps(usage_chunk)}{eol}{eol}"
            if script.mid != "no_done":
                data += f"data: [DONE]{eol}{eol}"
            # The client may reuse the connection as soon as it sees the end of the body.
            await stop_watching(watcher)
            await send_chunk(writer, data.encode(), script.chunk_bytes)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            entry.outcome = script.mid or "complete"
            return True
        except asyncio.CancelledError:
            if not entry.client_gone:
                entry.outcome = "stopped"
                raise
            task.uncancel()
            entry.outcome = "cancelled"
            return False
        except (ConnectionError, OSError):
            entry.client_gone = True
            entry.outcome = "cancelled"
            return False
        finally:
            watcher.cancel()
            self._active -= 1
            if not entry.completion_tokens:
                entry.completion_tokens = entry.tokens_sent
            self._changed()

    async def _send_raw(
        self,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        script: Script,
        eol: str,
        watcher: asyncio.Task[None],
        first_due: float,
    ) -> bool:
        """The script's raw items as the body, each its own HTTP chunk, then the end or the
        fault."""
        assert script.raw is not None
        loop = asyncio.get_running_loop()
        fault = script.fault_at(len(script.raw))
        for index, item in enumerate(script.raw):
            if index == fault:
                return await self._fault(writer, entry, script, eol, watcher)
            await sleep_until(loop, first_due + index * script.interval)
            # An empty chunk would be read as the end of the body.
            if item:
                await send_chunk(writer, item, script.chunk_bytes)
            entry.tokens_sent += 1
            self._changed()
        if fault is not None:
            return await self._fault(writer, entry, script, eol, watcher)
        await stop_watching(watcher)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        entry.outcome = script.mid or "complete"
        return True

    async def _fault(
        self,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        script: Script,
        eol: str,
        watcher: asyncio.Task[None],
    ) -> bool:
        mid = script.mid
        assert mid is not None
        entry.outcome = mid
        entry.completion_tokens = entry.tokens_sent
        self._changed()
        if mid == "error_line":
            # Chutes writes this without `data: ` and then ends the stream without [DONE].
            line = (json.dumps(ERROR_LINE) + eol).encode()
            await stop_watching(watcher)
            await send_chunk(writer, line, script.chunk_bytes)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if mid == "cut":
            await stop_watching(watcher)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if mid == "drop":
            await writer.drain()
            return False
        if mid == "torn":
            # The size line promises more than follows: the body ends inside a chunk, and
            # inside a `data:` line.
            piece = b'data: {"choices": [{"index": 0, "delta": {"content": "tor'
            writer.write(b"%x\r\n%b" % (len(piece) + 64, piece))
            await writer.drain()
            return False
        if mid == "stall":
            await asyncio.Future()  # until the client hangs up or the server stops
        transport = writer.transport
        # With a zero high-water mark, drain() returns only once every byte reached the socket.
        transport.set_write_buffer_limits(high=0)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return False


def _delta(plan: Plan, script: Script, index: int, token: Token, text: str) -> dict[str, Any]:
    mode = script.reasoning_mode
    tags = mode in ("think", "close_only") and bool(plan.reasoning)
    if token.kind == "reasoning":
        if not tags:
            delta: dict[str, Any] = {mode: text}
        else:
            opening = "<think>\n" if index == 0 and mode == "think" else ""
            # With no answer to follow, the last thought carries the closing tag itself.
            closing = "\n</think>\n\n" if index + 1 == len(plan.tokens) else ""
            delta = {"content": opening + text + closing}
    else:
        closing = ""
        if tags and index > 0 and plan.tokens[index - 1].kind == "reasoning":
            closing = "\n</think>\n\n"
        delta = {"content": closing + text}
    if index == 0:
        delta = {"role": "assistant", **delta}
    return delta


async def _watch(reader: asyncio.StreamReader, task: asyncio.Task[Any], entry: LogEntry) -> None:
    """Cancel the streaming task as soon as the client hangs up."""
    try:
        data = await reader.read(1)
    except (ConnectionError, OSError):
        data = b""
    if data:
        return  # httpx never pipelines; a stray byte is not a hang-up
    entry.client_gone = True
    task.cancel()
