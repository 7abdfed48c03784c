"""The upstream: Chutes, reached through the Lava forward proxy. No Django in this package except
`settings.py`, the one adapter that builds an `UpstreamConfig` from settings (lazily).

- `client.py`: `stream_chat()`, one chat completion streamed as typed events (its contract is
  in its docstring); `sse.py` decodes the stream, `reasoning.py` splits reasoning from answer,
  `text.py` makes text storable.
- `http.py`: the shared client of each event loop and the mapping of failures to
  `UpstreamError` (`errors.py`); `netio.py` is the client's sockets, on plain asyncio.
- `catalogue.py`: `fetch_models()`, the Chutes catalogue; `lava.py`: `fetch_request_cost()`.
- `config.py`: `UpstreamConfig`, where the upstream is and the credentials to reach it.
"""
