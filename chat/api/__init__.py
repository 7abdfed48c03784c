"""The JSON API beside the websocket, one module per resource (session auth, CSRF on writes).
Documented in docs/protocol.md. Bodies are read by `json.read_json`."""
