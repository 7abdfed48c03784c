"""A local stand-in for Lava's forward proxy and the Chutes API, for tests, benchmarks and demos.

    python -m chat.fakeupstream --port 8765 --token demo-token

Point `LAVA_FORWARD_URL` at `http://127.0.0.1:8765/v1/forward`, `CHUTES_API_BASE` at
`http://127.0.0.1:8765/v1` and `LAVA_FORWARD_TOKEN` (or `LAVA_SECRET_KEY`) at the token. It needs
no Django settings. See `server.py` for the endpoints and `script.py` for the behaviours a
request can ask for, including by typing `[[fake {"mid": "error_line", "after": 3}]]` in a chat.
"""

from chat.fakeupstream.catalogue import MODELS, default_catalogue
from chat.fakeupstream.script import (
    Plan,
    Script,
    ScriptError,
    count_prompt_tokens,
    expected_text,
    plan_reply,
)
from chat.fakeupstream.server import FakeUpstream, LogEntry, error_body, running_in_thread

__all__ = [
    "MODELS",
    "FakeUpstream",
    "LogEntry",
    "Plan",
    "Script",
    "ScriptError",
    "count_prompt_tokens",
    "default_catalogue",
    "error_body",
    "expected_text",
    "plan_reply",
    "running_in_thread",
]
