"""Dependencies shared by the HTTP routes: the app state, the API key, parameters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BeforeValidator

from app.inference.model import MAX_TOP_K
from app.security import ApiKeys
from app.state import AppState


# Dependencies are ``async def`` although they never await: FastAPI runs a plain ``def`` one in
# its thread pool, two thread hand-offs on every request for a dictionary lookup.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.imgserve
    return state


StateDep = Annotated[AppState, Depends(get_state)]


# Only for the OpenAPI document's security schemes: the check reads the headers itself.
bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


def create_key_checker(keys: ApiKeys) -> Callable[..., Awaitable[None]]:
    """A dependency that raises ``UnauthenticatedError`` unless the request carries a key."""

    async def require_api_key(
        request: Request,
        _bearer: Annotated[object, Security(bearer_scheme)],
        _api_key: Annotated[object, Security(api_key_scheme)],
    ) -> None:
        keys.check(request.headers.get("authorization"), request.headers.get("x-api-key"))

    return require_api_key


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
