"""Optional API keys, one rule for every protocol: ``Authorization: Bearer KEY`` (the scheme in
any case, RFC 9110) or ``X-API-Key: KEY``, as HTTP headers or gRPC metadata, compared in
constant time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from pydantic import SecretStr

from app.inference.errors import UnauthenticatedError

MISSING_KEY = "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


def key_matches(candidate: str, keys: Sequence[bytes]) -> bool:
    """Compare against every key, always all of them, so timing reveals nothing."""
    encoded = candidate.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(encoded, key)
    return found


class ApiKeys:
    """The configured keys; :meth:`check` raises ``UnauthenticatedError`` unless one was sent."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        self._keys = [key.get_secret_value().encode() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None, api_key: str | None) -> None:
        candidates = [c for c in (api_key, bearer_token(authorization)) if c]
        if not candidates:
            raise UnauthenticatedError(MISSING_KEY)
        if not any([key_matches(candidate, self._keys) for candidate in candidates]):
            raise UnauthenticatedError("invalid API key")


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of ``Bearer <token>`` (the scheme in any case), else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
