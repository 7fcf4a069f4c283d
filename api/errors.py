"""Every error the API returns has one shape: {"code": machine-readable, "message": for people}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def invalid(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Not found"},
    422: {"model": ErrorBody, "description": "Invalid parameters"},
}
# Every route behind a Bearer token may also answer these (see api/auth.py).
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "Missing, malformed, unknown or revoked token (code `unauthorized`)",
    },
    429: {
        "model": ErrorBody,
        "description": "The key's rate limit is exhausted (code `rate_limited`); "
        "retry after the `Retry-After` header's seconds",
    },
}


def api_error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"code": exc.code, "message": exc.message}, status_code=exc.status, headers=exc.headers
    )


def validation_response(exc: RequestValidationError) -> JSONResponse:
    details = [
        {"location": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
    ]
    message = "; ".join(f"{d['location']}: {d['problem']}" for d in details)
    return JSONResponse(
        {"code": "invalid_parameter", "message": message, "details": details}, status_code=422
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"code": code, "message": str(exc.detail)}, status_code=exc.status_code)
