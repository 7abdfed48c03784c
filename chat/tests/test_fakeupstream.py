from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.testing.fakeupstream import (
    FakeUpstream,
    ScriptError,
    count_prompt_tokens,
    delta_chunk,
    expected_text,
    running_in_thread,
    sse_event,
)
from chat.testing.fakeupstream.catalogue import MODELS
from chat.tests.fixtures_upstream import (
    MODEL,
    REASONING_MODEL,
    TOKEN,
    chat_body,
)
from chat.upstream.sse import SSEDecoder

REPO = Path(__file__).resolve().parents[2]
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def forward_token(secret: str, **claims: str) -> str:
    return base64.b64encode(json.dumps({"secret_key": secret, **claims}).encode()).decode()


def sse_deltas(raw: bytes) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    events = decoder.feed(raw) + decoder.close()
    chunks = [json.loads(event.data) for event in events if not event.is_error]
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def content_of(raw: bytes) -> str:
    return "".join(delta.get("content") or "" for delta in sse_deltas(raw))


async def post_chat(
    fake: FakeUpstream, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        return await client.post(
            "/v1/chat/completions", json=body, headers=BEARER if headers is None else headers
        )


# The catalogue


async def test_the_catalogue_lists_the_eighteen_models(bare_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=bare_upstream.url) as client:
        data = (await client.get("/v1/models")).json()["data"]
    assert [m["id"] for m in data] == [m.id for m in MODELS]
    assert len(data) == 18
    by_id = {m["id"]: m for m in data}
    assert Decimal(str(by_id["Qwen/Qwen3-32B"]["pricing"]["prompt"])) == Decimal("0.027")
    assert Decimal(str(by_id["tngtech/DeepSeek-TNG-R1T2-Chimera"]["pricing"]["completion"])) == (
        Decimal("0.3")
    )
    assert by_id["Qwen/Qwen2.5-VL-32B-Instruct"]["input_modalities"] == ["text", "image"]
    assert "reasoning" in by_id[REASONING_MODEL]["supported_features"]
    assert "reasoning" not in by_id[MODEL]["supported_features"]
    assert by_id[MODEL]["context_length"] == 128000


async def test_the_catalogue_can_be_replaced(bare_upstream: FakeUpstream) -> None:
    bare_upstream.set_catalogue([{"id": "acme/Tiny-1B", "pricing": {"prompt": 1, "completion": 2}}])
    async with httpx.AsyncClient(base_url=bare_upstream.url) as client:
        data = (await client.get("/v1/models")).json()["data"]
    assert [m["id"] for m in data] == ["acme/Tiny-1B"]
    assert (await post_chat(bare_upstream, chat_body(model="acme/Tiny-1B"))).status_code == 200
    missing = await post_chat(bare_upstream, chat_body(model=MODEL))
    assert (missing.status_code, missing.json()) == (404, {"detail": f"model not found: {MODEL}"})


async def test_unknown_models_are_served_when_not_strict() -> None:
    async with FakeUpstream(tokens=(TOKEN,), strict_models=False) as fake:
        assert (await post_chat(fake, chat_body(model="anything/goes"))).status_code == 200


# Authorisation


@pytest.mark.parametrize(
    ("bearer", "accepted"),
    [
        (TOKEN, True),
        (forward_token(TOKEN, customer_id="cus_1"), True),
        (forward_token("aks_test_other"), False),
        ("nonsense", False),
        ("", False),
    ],
)
async def test_the_forward_proxy_checks_the_bearer(
    bare_upstream: FakeUpstream, bearer: str, accepted: bool
) -> None:
    target = "https%3A%2F%2Fllm.chutes.ai%2Fv1%2Fchat%2Fcompletions"
    async with httpx.AsyncClient(base_url=bare_upstream.url) as client:
        response = await client.post(
            f"/v1/forward?u={target}",
            json=chat_body(stream=False),
            headers={"Authorization": f"Bearer {bearer}"} if bearer else {},
        )
    if accepted:
        assert response.status_code == 200
        assert response.headers["x-lava-request-id"].startswith("req_")
        assert response.headers["x-chutes-invocationid"]
    else:
        assert response.status_code == 401
        assert "error" in response.json()


async def test_the_direct_endpoint_answers_401_like_chutes(bare_upstream: FakeUpstream) -> None:
    response = await post_chat(bare_upstream, chat_body(), headers={})
    assert (response.status_code, response.json()) == (401, {"detail": "Invalid token."})
    assert "x-lava-request-id" not in response.headers


async def test_payment_errors_look_like_whoever_sends_them(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(status=402)
    direct = await post_chat(bare_upstream, chat_body())
    assert direct.status_code == 402
    assert direct.json()["detail"]["message"].startswith("Quota exceeded")
    bare_upstream.push_script(status=402)
    async with httpx.AsyncClient(base_url=bare_upstream.url) as client:
        forwarded = await client.post(
            "/v1/forward?u=https%3A%2F%2Fx%2Fv1%2Fchat%2Fcompletions",
            json=chat_body(),
            headers=BEARER,
        )
    assert forwarded.status_code == 402
    assert set(forwarded.json()) == {"error"}


async def test_billing_records_require_a_bearer(bare_upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=bare_upstream.url) as client:
        assert (await client.get("/v1/requests/req_x")).status_code == 401
        assert (await client.get("/v1/requests/req_x", headers=BEARER)).status_code == 404


# Replies


async def test_the_default_reply_is_deterministic_and_not_ascii(
    bare_upstream: FakeUpstream,
) -> None:
    body = chat_body("Tell me something nice", stream=True)
    response = await post_chat(bare_upstream, body)
    text = content_of(response.content)
    assert text == expected_text(None, body["messages"])
    assert text.startswith("Echo: Tell me something nice. ")
    assert re.search(r"[^\x00-\x7f]", text)
    assert bare_upstream.last.tokens_sent == 12


async def test_a_directive_in_the_last_user_message_sets_the_script(
    bare_upstream: FakeUpstream,
) -> None:
    body = chat_body('Go [[fake {"text": "Salut à toi", "finish_reason": "length"}]]', stream=True)
    response = await post_chat(bare_upstream, body)
    assert content_of(response.content) == "Salut à toi"
    assert '"finish_reason": "length"' in response.text


@pytest.mark.parametrize(
    "directive",
    ['{"mid": "explode"}', '{"tokens": "5"}', '{"colour": "red"}', "{not json}"],
)
async def test_a_bad_directive_is_a_400(bare_upstream: FakeUpstream, directive: str) -> None:
    response = await post_chat(bare_upstream, chat_body(f"[[fake {directive}]]"))
    assert response.status_code == 400
    assert "fake directive" in response.json()["detail"]


def test_a_bad_pushed_script_fails_in_the_caller() -> None:
    fake = FakeUpstream()
    with pytest.raises(ScriptError):
        fake.push_script(bogus=1)
    with pytest.raises(ScriptError):
        fake.push_script(reasoning_mode="telepathy")


async def test_the_non_streaming_reply_carries_reasoning_and_usage(
    bare_upstream: FakeUpstream,
) -> None:
    body = chat_body("Hi", model=REASONING_MODEL, stream=False)
    bare_upstream.push_script(reasoning="Thought.", text="Answer.")
    data = (await post_chat(bare_upstream, body)).json()
    message = data["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("Answer.", "Thought.")
    assert data["usage"]["prompt_tokens"] == count_prompt_tokens(body["messages"])
    assert data["usage"]["completion_tokens"] == 2


async def test_the_stream_ends_with_a_usage_chunk_and_done(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(usage={"prompt_tokens": 100, "cached_tokens": 40})
    raw = (await post_chat(bare_upstream, chat_body(stream=True))).content
    assert raw.endswith(b"data: [DONE]\n\n")
    decoder = SSEDecoder()
    chunks = [json.loads(event.data) for event in decoder.feed(raw)]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 100
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 40}
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("reasoning_content", {"reasoning_content": "Deep thought."}),
        ("reasoning", {"reasoning": "Deep thought."}),
        ("think", {"content": "<think>\nDeep thought.\n</think>\n\nOk."}),
        ("close_only", {"content": "Deep thought.\n</think>\n\nOk."}),
    ],
)
async def test_reasoning_is_written_in_the_form_asked_for(
    bare_upstream: FakeUpstream, mode: str, expected: dict[str, str]
) -> None:
    bare_upstream.push_script(reasoning="Deep thought.", reasoning_mode=mode, text="Ok.")
    deltas = sse_deltas((await post_chat(bare_upstream, chat_body(stream=True))).content)
    joined: dict[str, str] = {}
    for delta in deltas:
        for key in ("content", "reasoning_content", "reasoning"):
            joined[key] = joined.get(key, "") + (delta.get(key) or "")
    for key, value in expected.items():
        assert joined[key] == value


async def test_crlf_and_pings_are_written_when_asked(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(crlf=True, ping_every=3)
    raw = (await post_chat(bare_upstream, chat_body(stream=True))).content
    assert b"\r\n\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")
    assert raw.count(b": ping") == 3


async def test_the_mid_stream_error_line_has_no_data_prefix(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(mid="error_line", after=2)
    raw = (await post_chat(bare_upstream, chat_body(stream=True))).content
    assert raw.endswith(
        b'\n{"error": "Unhandled exception during response stream: fake failure"}\n'
    )
    assert b"[DONE]" not in raw
    assert bare_upstream.last.outcome == "error_line"
    assert bare_upstream.last.tokens_sent == 2


async def test_fail_times_fails_then_serves(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(status=429, fail_times=2, retry_after=1)
    statuses = [(await post_chat(bare_upstream, chat_body())) for _ in range(3)]
    assert [r.status_code for r in statuses] == [429, 429, 200]
    assert statuses[0].headers["retry-after"] == "1"
    assert statuses[0].json() == {
        "detail": "Infrastructure is at maximum capacity, try again later"
    }


async def test_stamped_tokens_carry_their_emit_time_on_an_open_loop_schedule(
    bare_upstream: FakeUpstream,
) -> None:
    bare_upstream.push_script(stamp=True, tokens=6, interval_ms=15)
    raw = (await post_chat(bare_upstream, chat_body(stream=True))).content
    stamps = [tuple(map(int, m)) for m in re.findall(r"⟦(\d+):(\d+)⟧", content_of(raw))]
    assert [index for index, _ns in stamps] == list(range(6))
    times = [ns for _index, ns in stamps]
    assert times == sorted(times)
    # Token i is due 15 ms after token i-1: the whole run takes at least 5 intervals.
    assert times[-1] - times[0] >= 5 * 15_000_000 - 2_000_000
    assert bare_upstream.last.max_lateness_ms >= 0
    with pytest.raises(ValueError, match="stamped"):
        expected_text({"stamp": True}, chat_body()["messages"])


async def test_a_hang_up_mid_stream_is_logged_as_cancelled(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(tokens=500, interval_ms=10)
    async with (
        httpx.AsyncClient(base_url=bare_upstream.url) as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True),
                      headers=BEARER) as response,
    ):  # fmt: skip
        async for _ in response.aiter_raw():
            break
    await bare_upstream.wait_until(lambda: bare_upstream.last.outcome == "cancelled")
    assert bare_upstream.last.client_gone
    assert bare_upstream.active_streams == 0


# The helpers


def test_expected_text_echoes_the_last_user_message_without_the_directive() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {
            "role": "user",
            "content": [{"type": "text", "text": 'Second one [[fake {"tokens": 3}]]'}],
        },
    ]
    text = expected_text(None, messages)
    assert text.startswith("Echo: Second one. ")
    assert text == expected_text(
        {"tokens": 3}, [*messages[:2], {"role": "user", "content": "Second one"}]
    )


def test_prompt_tokens_are_counted_deterministically() -> None:
    messages = [{"role": "user", "content": "12345678"}]
    assert count_prompt_tokens(messages) == 4 + 2
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_image = [{"role": "user", "content": [{"type": "text", "text": "1234"}, image]}]
    assert count_prompt_tokens(with_image) == 4 + 1 + 85


async def test_wait_until_gives_up_after_its_timeout(bare_upstream: FakeUpstream) -> None:
    with pytest.raises(TimeoutError):
        await bare_upstream.wait_until(lambda: False, timeout=0.05)


def test_running_in_a_thread_serves_sync_clients() -> None:
    with running_in_thread(tokens=(TOKEN,)) as fake, httpx.Client(base_url=fake.url) as client:
        fake.push_script(text="From a thread.")
        response = client.post("/v1/chat/completions", json=chat_body(stream=True), headers=BEARER)
        assert content_of(response.content) == "From a thread."
        fake.wait_for(lambda: fake.last is not None and fake.last.outcome == "complete")
        assert len(fake.chat_log()) == 1


# The command


def _without_django() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_the_stand_in_imports_without_django() -> None:
    code = (
        "import sys, chat.testing.fakeupstream; "
        "assert not [m for m in sys.modules if m.startswith('django')], 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_without_django(), cwd=REPO,
                   timeout=30)  # fmt: skip


@pytest.mark.slow
async def test_the_command_serves_the_catalogue() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chat.testing.fakeupstream", "--port", "0", "--token", "cli-token",
        stdout=asyncio.subprocess.PIPE, env=_without_django(), cwd=REPO,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        url = re.search(r"listening on (http://\S+)", line)
        assert url, line
        async with httpx.AsyncClient(base_url=url.group(1)) as client:
            models = (await client.get("/v1/models")).json()["data"]
            assert len(models) == 18
            refused = await client.post("/v1/chat/completions", json=chat_body())
            assert refused.status_code == 401
    finally:
        process.terminate()
        code = await asyncio.wait_for(process.wait(), 15)
    assert code == 0


# Raw replies: exact bytes, for what a real server may send


async def test_a_raw_reply_is_sent_byte_for_byte(bare_upstream: FakeUpstream) -> None:
    items = [sse_event(delta_chunk({"content": "\ud83d"})), b'data: {"cho', b"\xff\r\n\r\n"]
    bare_upstream.push_script(raw=items, interval_ms=5)
    async with (
        httpx.AsyncClient(base_url=bare_upstream.url) as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True),
                      headers=BEARER) as response,
    ):  # fmt: skip
        received = [chunk async for chunk in response.aiter_raw()]
    assert b"".join(received) == b"".join(items)
    # Lone surrogates go out as JSON escapes, as a server that writes ASCII JSON sends them.
    assert b'"content": "\\ud83d"' in items[0]
    await bare_upstream.wait_until(lambda: bare_upstream.last.outcome == "complete")
    assert bare_upstream.last.tokens_sent == 3


async def test_a_raw_reply_ends_with_the_fault_asked_for(bare_upstream: FakeUpstream) -> None:
    items = [sse_event(delta_chunk({"content": "a"})), sse_event(delta_chunk({"content": "b"}))]
    bare_upstream.push_script(raw=items, mid="drop", after=1)
    async with (
        httpx.AsyncClient(base_url=bare_upstream.url) as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True),
                      headers=BEARER) as response,
    ):  # fmt: skip
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in response.aiter_raw():
                received += chunk
    assert bytes(received) == items[0]
    assert bare_upstream.last.outcome == "drop"


async def test_a_torn_chunk_cuts_the_body_inside_a_line(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(tokens=2, mid="torn", after=2)
    async with (
        httpx.AsyncClient(base_url=bare_upstream.url) as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True),
                      headers=BEARER) as response,
    ):  # fmt: skip
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in response.aiter_raw():
                received += chunk
    assert received.endswith(b'data: {"choices": [{"index": 0, "delta": {"content": "tor')


async def test_a_raw_reply_that_does_not_stream_is_one_body(bare_upstream: FakeUpstream) -> None:
    bare_upstream.push_script(raw=[b'{"choices": ', b"[]}"])
    response = await post_chat(bare_upstream, chat_body())
    assert response.content == b'{"choices": []}'


def test_raw_items_must_be_bytes_or_encodable_text() -> None:
    fake = FakeUpstream()
    with pytest.raises(ScriptError):
        fake.push_script(raw=[1])
    with pytest.raises(ScriptError, match="JSON escapes"):
        fake.push_script(raw=["\ud83d"])
    with pytest.raises(ValueError, match="raw"):
        expected_text({"raw": ["data: x\n\n"]}, chat_body()["messages"])
