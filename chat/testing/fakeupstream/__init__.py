"""A local stand-in for Lava's forward proxy and the Chutes API, for tests, benchmarks and demos.

    python -m chat.testing.fakeupstream --port 8765 --token demo-token

Point `LAVA_FORWARD_URL` at `http://127.0.0.1:8765/v1/forward`, `CHUTES_API_BASE` at
`http://127.0.0.1:8765/v1` and `LAVA_FORWARD_TOKEN` (or `LAVA_SECRET_KEY`) at the token. It needs
no Django settings. See `server.py` for the endpoints and `script.py` for the behaviours a
request can ask for, including by typing `[[fake {"mid": "error_line", "after": 3}]]` in a chat,
or a reply of exact bytes (`raw`), for tests of what a real server may send.
"""

from chat.testing.fakeupstream.catalogue import MODELS, default_catalogue
from chat.testing.fakeupstream.script import (
    DONE_EVENT,
    Plan,
    Script,
    ScriptError,
    count_prompt_tokens,
    delta_chunk,
    expected_text,
    plan_reply,
    sse_event,
    usage_numbers,
)
from chat.testing.fakeupstream.server import FakeUpstream, LogEntry, error_body, running_in_thread

__all__ = [
    "DONE_EVENT",
    "MODELS",
    "FakeUpstream",
    "LogEntry",
    "Plan",
    "Script",
    "ScriptError",
    "count_prompt_tokens",
    "default_catalogue",
    "delta_chunk",
    "error_body",
    "expected_text",
    "plan_reply",
    "running_in_thread",
    "sse_event",
    "usage_numbers",
]
