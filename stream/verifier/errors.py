"""The verifier's one error: it cannot read its topics or its policy file."""

from __future__ import annotations

from stream.errors import StreamError


class VerifyError(StreamError):
    """Raised when the verifier cannot read its topics or its policy file."""
