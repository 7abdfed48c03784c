"""The upstream's one error type: `UpstreamError`, with a stable `code` and a message that is safe
to show a user."""

from __future__ import annotations

ERROR_CODES = frozenset(
    {
        "not_configured",
        "auth",
        "payment",
        "model_not_found",
        "overloaded",
        "bad_request",
        "upstream_error",
        "timeout",
        "protocol",
    }
)


NOT_CONFIGURED_MESSAGE = (
    "The model service is not configured: set LAVA_FORWARD_TOKEN or LAVA_SECRET_KEY."
)


class UpstreamError(Exception):
    """A failure talking to the upstream, with a stable code and a message safe for users."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        after_tokens: bool = False,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown upstream error code: {code}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.after_tokens = after_tokens
        # What the upstream said, redacted and capped: for logs only, never for users.
        self.log_detail: str | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"UpstreamError(code={self.code!r}, message={self.message!r}, "
            f"retryable={self.retryable}, status={self.status}, after_tokens={self.after_tokens})"
        )
