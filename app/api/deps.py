"""Dependencies and OpenAPI fragments shared by the REST routes."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BeforeValidator

from app.inference.model import MAX_TOP_K
from app.schemas import ErrorResponse
from app.state import AppState


# Dependencies are ``async def`` although they never await: FastAPI runs a plain ``def`` one in
# its thread pool, two thread hand-offs on every request for a dictionary lookup.
async def get_state(request: Request) -> AppState:
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


async def reject_repeated_query_parameters(request: Request) -> None:
    """A query parameter the route takes, given more than once, is refused (422; 400 on the
    ``{"error"}`` front ends): which of ``?top_k=abc&top_k=2`` counts would be a guess."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.url.query:
        return
    taken = {param.alias for param in route.dependant.query_params}
    counts = Counter(key for key, _ in request.query_params.multi_items() if key in taken)
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "repeated_parameter",
                    "loc": ("query", name),
                    "msg": "given more than once; send it once",
                    "input": request.query_params.getlist(name),
                }
                for name in repeated
            ]
        )


def _whole_number(value: object) -> object:
    """Plain decimal digits only: pydantic, like int(), would also take '1_000', ' 5' or '+5'."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()) and _int_parses(value):
        raise ValueError("write the number in plain decimal digits, without sign, spaces or '_'")
    return value


def _int_parses(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False  # pydantic says what is wrong
    return True


WholeNumber = BeforeValidator(_whole_number)
TOP_K_DESCRIPTION = (
    f"Classes per image: 1 to the number of classes, at most {MAX_TOP_K} (default 5, or all if fewer)."
)
