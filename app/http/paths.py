"""One endpoint on a model's path and on the path of one of its versions.

The protocols name a model's latest version as ``.../models/{name}...`` and one version as
``.../models/{name}/versions/{version}...``. :func:`model_routes` serves both with one
endpoint that takes ``version: str | None = None``: a path parameter of the second route and
no parameter at all of the first (FastAPI would otherwise declare it a query parameter).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

E = TypeVar("E", bound=Callable[..., Any])


def model_routes(
    router: APIRouter,
    path: str,
    *,
    methods: list[str],
    versioned_name: str,
    versioned_description: str,
    version: Any = str,
    **options: Any,
) -> Callable[[E], E]:
    """Register the decorated endpoint on ``path`` (with ``{name}``) and, named
    ``versioned_name`` in the OpenAPI document, on ``{name}/versions/{version}``; ``version``
    is the annotation of that path parameter."""

    def register(endpoint: E) -> E:
        signature = inspect.signature(endpoint, eval_str=True)
        others = [p for p in signature.parameters.values() if p.name != "version"]
        after_name = [p.name for p in others].index("name") + 1  # the path's order: name, version
        versioned = inspect.Parameter("version", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=version)
        latest = _with_parameters(endpoint, signature, others)
        router.add_api_route(path, latest, methods=methods, **options)
        router.add_api_route(
            path.replace("{name}", "{name}/versions/{version}"),
            _with_parameters(endpoint, signature, [*others[:after_name], versioned, *others[after_name:]]),
            methods=methods,
            name=versioned_name,
            description=versioned_description,
            **options,
        )
        return endpoint

    return register


def _with_parameters(
    endpoint: Callable[..., Any], signature: inspect.Signature, parameters: list[inspect.Parameter]
) -> Callable[..., Any]:
    async def call(**values: Any) -> Any:
        return await endpoint(**values)

    call.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    call.__name__, call.__doc__ = endpoint.__name__, endpoint.__doc__
    return call
