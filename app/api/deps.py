"""Dependencies and OpenAPI fragments shared by the REST routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.schemas import ErrorResponse
from app.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.imgserve
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def error_response(description: str, retry_after: bool = False) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry with the one error body."""
    entry: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        entry["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return entry


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: error_response("Missing or invalid API key (only when API keys are configured).")
}
NOT_READY: dict[int | str, dict[str, Any]] = {
    503: error_response("Not ready: loading, overloaded or draining.", retry_after=True)
}
