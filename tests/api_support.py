"""The REST routes as data, for tests that must cover every route: built from
api.app.include_routers on a bare FastAPI app, so listing them needs no services."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI

from api.app import include_routers

# Served to anyone: liveness and FastAPI's own documents.
OPEN_PATHS = {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PARAM = re.compile(r"{(\w+)}")


def _walk(routes: Iterable[Any]) -> Iterator[Any]:
    # FastAPI 0.16x keeps included routers as branches instead of copying their routes.
    for r in routes:
        if hasattr(r, "effective_route_contexts"):
            yield from _walk(r.effective_route_contexts())
        else:
            yield r


def http_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route of `app`, HEAD aside."""
    return sorted(
        (m, r.path)
        for r in _walk(app.routes)
        for m in (getattr(r, "methods", None) or ())
        if m != "HEAD"
    )


def _bare() -> FastAPI:
    app = FastAPI()
    include_routers(app)
    return app


ALL_ROUTES = http_routes(_bare())
PROTECTED_ROUTES = [(m, p) for m, p in ALL_ROUTES if p not in OPEN_PATHS]


def fill(path: str, **values: str) -> str:
    """The path with its parameters filled: from `values`, else a harmless placeholder."""
    defaults = {
        "symbol": "AAPL",
        "watchlist_id": str(uuid.uuid4()),
        "key_id": "TFAAAAAAAAAAAAAAAA",
        "order_id": str(uuid.uuid4()),
    }
    return PARAM.sub(lambda m: values.get(m[1], defaults.get(m[1], "x")), path)


def route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"
