"""Optional API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.errors import UnauthorizedError

bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


def key_matches(candidate: str, keys: Sequence[bytes]) -> bool:
    """Compare against every key, always all of them, so timing reveals nothing."""
    encoded = candidate.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(encoded, key)
    return found


def create_key_checker(keys: Sequence[SecretStr]) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that raises 401 unless the request carries one of ``keys``."""
    encoded = [key.get_secret_value().encode() for key in keys]

    async def require_api_key(
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
        api_key: Annotated[str | None, Security(api_key_scheme)],
    ) -> None:
        candidates = [c for c in (api_key, bearer.credentials if bearer else None) if c]
        if not candidates:
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
        if not any([key_matches(candidate, encoded) for candidate in candidates]):
            raise UnauthorizedError("invalid API key")

    return require_api_key
