"""The API's contract: one error body for every error, every status code an operation can
answer documented with its body, and ``Allow`` headers that name every method of a path.

- :class:`ErrorBody` ``{"detail": "..."}`` is the body of every 4xx, including request
  validation (FastAPI's default 422 body is a list; here it is one sentence, like the others).
- :func:`errors` builds an operation's ``responses=`` from the codes it can answer.
- :func:`install` puts the handlers on an app: the library's errors by their kind
  (:data:`STATUS`), validation errors as ErrorBody, and a 405 whose ``Allow`` lists the methods
  of every route of that path (Starlette lists only the first).
- :func:`example_item_id` makes an id the index holds the example of every ``{item_id}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from lookalike.errors import LookalikeError
from lookalike.ingest.checks import ID_RULE, shown

WHY = {
    400: "A malformed request (e.g. a Content-Length that is not a number)",
    401: "Changes need the X-API-Key header with the server's key",
    404: "No item with this id, or its photo is missing",
    409: "An item with this id exists already",
    413: "The body, or the photo's pixels, over the server's limits",
    415: "The upload is not an image that can be decoded",
    422: "A parameter, filter, id or metadata value that is not accepted",
    503: "Too many photos wait for the model already; try again after Retry-After seconds",
}

#: the HTTP status of each kind of library error (lookalike.errors)
STATUS = {"invalid": 422, "unknown_item": 404, "exists": 409, "not_an_image": 415,
          "too_large": 413, "busy": 503, "index_format": 500}
RETRY_AFTER_S = 1  # told with every 503


class ErrorBody(BaseModel):
    """Every error answer."""

    detail: str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for an operation that can answer these error codes."""
    return {code: {"model": ErrorBody, "description": WHY[code]} for code in codes}


def _sentence(exc: RequestValidationError) -> str:
    """The validation errors in one sentence; an item id that breaks the id rule is told the
    rule, in the words every other path uses (lookalike.ingest.checks)."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        if where == "item_id" and e.get("input") is not None:
            parts.append(f"item id {shown(e['input'])}: {ID_RULE}")
        else:
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where
                         else e.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """The handlers above, on ``app``; ``routers`` are the routers the app includes (their
    routes name the methods of a 405's ``Allow``)."""
    routes = [*app.router.routes, *(r for router in routers for r in router.routes)]

    @app.exception_handler(LookalikeError)
    async def refused(_: Request, exc: LookalikeError) -> JSONResponse:
        status = STATUS.get(exc.kind, 422)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _sentence(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            methods: set[str] = set()
            for route in routes:
                match, _ = route.matches(request.scope)
                if match != Match.NONE:
                    methods |= set(getattr(route, "methods", None) or ())
            if methods:
                headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=headers or None)


def example_item_id(app: FastAPI, examples: list[str]) -> None:
    """Every ``{item_id}`` parameter of the schema gets ``examples`` (ids the index holds):
    fuzzers and the /docs page start from an id that exists."""
    make = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = make()
            for operations in schema["paths"].values():
                for op in operations.values():
                    for p in op.get("parameters", ()):
                        if p["name"] == "item_id" and p["in"] == "path":
                            p["schema"]["examples"] = examples
        return app.openapi_schema

    app.openapi = openapi
