"""Request bodies whose decimals must be read exactly.

FastAPI parses a declared body with json.loads, which turns 0.1 into a float; money must
never be a float (DESIGN.md, invariant 5). Routes that take money read the raw bytes and
parse them here: JSON numbers become Decimal from their text, then the pydantic model
validates. The model still documents the body in OpenAPI (`body_doc`).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def exact_json(raw: bytes) -> Any:
    """JSON with every number that has a fraction or exponent as an exact Decimal."""
    return json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)


def parse(raw: bytes, model: type[M]) -> M:
    """`model` from a raw JSON body; 422 invalid_parameter as for FastAPI's own bodies."""
    try:
        data = exact_json(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"not valid JSON: {exc}", "type": "json_invalid"}]
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


async def raw_body(request: Request) -> bytes:
    return await request.body()


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra documenting `model` as the JSON request body."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
