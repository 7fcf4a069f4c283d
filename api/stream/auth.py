"""Who is on the stream: api.auth.authenticate_token, from a header or the first message."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Protocol


class Principal(Protocol):
    """What the stream needs of api.auth.Principal."""

    key_id: Any
    user_id: Any
    account_id: Any


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; "" if malformed, None if absent."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


async def authenticate(token: str) -> Principal | None:
    """api.auth.authenticate_token, off the event loop when it is synchronous (it reads a DB)."""
    from api.auth import authenticate_token

    if inspect.iscoroutinefunction(authenticate_token):
        return await authenticate_token(token)
    return await asyncio.to_thread(authenticate_token, token)
