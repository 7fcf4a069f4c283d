"""Who is calling, and whether they may call now: Bearer API keys and per-key rate limits.

Every REST route except /health (and the OpenAPI documents) needs

    Authorization: Bearer <key_id>.<secret>

where key_id is "TF" + 16 base32 characters and secret the 43-character base64url
string shown once when the key was created (`POST /v1/keys`, `tapeflow keys create`).
A missing, malformed, unknown or revoked token answers 401 `unauthorized` with
`WWW-Authenticate: Bearer`; a key over its rate limit answers 429 `rate_limited` with
`Retry-After` (seconds). Successful answers carry `X-RateLimit-Limit` and
`X-RateLimit-Remaining`.

Revocation delay: a process remembers a key it has verified for `auth_cache_s`
(TAPEFLOW_AUTH_CACHE_S, 5 s by default), so a key revoked through another process
(another API worker, `tapeflow keys revoke`) keeps working there for up to that long.
The process that revokes forgets the key at once. Failed lookups are never cached.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError, ErrorBody
from infra import api_keys, db
from infra.api_keys import Principal
from infra.settings import Settings, get_settings
from infra.tokens import Token, parse_token, secret_hash

__all__ = [
    "CurrentPrincipal",
    "Principal",
    "authenticate_token",
    "authorized",
    "forget_key",
]

bearer = HTTPBearer(
    auto_error=False,  # so a missing header answers our 401 body, not FastAPI's 403
    scheme_name="Bearer",
    bearerFormat="<key_id>.<secret>",
    description="An API key's token: `Authorization: Bearer <key_id>.<secret>`. "
    "Create one with `POST /v1/keys` or `tapeflow keys create --email ...`.",
)


@dataclass(frozen=True, slots=True)
class _Entry:
    secret_hash: bytes
    principal: Principal
    expires: float  # time.monotonic()


class PrincipalCache:
    """Keys verified recently, by key_id. A hit still checks the secret against its hash."""

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, token: Token) -> Principal | None:
        entry = self._entries.get(token.key_id)
        if entry is None or entry.expires < time.monotonic():
            return None
        if not hmac.compare_digest(secret_hash(token.key_id, token.secret), entry.secret_hash):
            return None  # a wrong secret goes to the database like any other miss
        return entry.principal

    def put(self, token: Token, principal: Principal, ttl_s: float) -> None:
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                now = time.monotonic()
                self._entries = {k: e for k, e in self._entries.items() if e.expires >= now}
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
            self._entries[token.key_id] = _Entry(
                secret_hash(token.key_id, token.secret), principal, time.monotonic() + ttl_s
            )

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._entries.pop(key_id, None)


_cache = PrincipalCache()


def authenticate_token(token: str, settings: Settings | None = None) -> Principal | None:
    """The Principal of a Bearer token's value (`<key_id>.<secret>`), or None.

    For REST and WebSocket alike. Blocking: a cache miss is one PostgreSQL read.
    """
    settings = settings or get_settings()
    parsed = parse_token(token)
    if parsed is None:
        return None
    caching = settings.auth_cache_s > 0
    principal = _cache.get(parsed) if caching else None
    if principal is not None:
        return principal
    principal = api_keys.authenticate(db.pool(settings.postgres), token)
    if principal is not None and caching:
        _cache.put(parsed, principal, settings.auth_cache_s)
    return principal


def forget_key(key_id: str) -> None:
    """Drop a revoked key from this process's cache, so it stops working here at once."""
    _cache.forget(key_id)


def _unauthorized(message: str, error: str | None = None) -> ApiError:
    challenge = 'Bearer realm="tapeflow"' + (f', error="{error}"' if error else "")
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": challenge})


def _cached(token: str, settings: Settings) -> Principal | bool | None:
    """The Principal when this process verified the token recently; None when the token
    is malformed; False when only the database can tell."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    if settings.auth_cache_s > 0:
        principal = _cache.get(parsed)
        if principal is not None:
            return principal
    return False


async def authenticated(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The caller's Principal from the Bearer token; 401 when there is none. A key this
    process verified recently costs no I/O; otherwise one PostgreSQL read, in a thread."""
    if credentials is None:
        raise _unauthorized("send an API key: Authorization: Bearer <key_id>.<secret>")
    settings = request.app.state.settings
    principal = _cached(credentials.credentials, settings)
    if principal is False:
        principal = await run_in_threadpool(authenticate_token, credentials.credentials, settings)
    if not principal:
        raise _unauthorized("the API key is malformed, unknown or revoked", "invalid_token")
    return principal


async def rate_limited(request: Request, response: Response, principal: Principal) -> None:
    """Count one request against the key's rate limit; 429 when it is spent."""
    limit = principal.rate_limit_per_minute
    decision = await request.app.state.limiter.ahit(principal.key_id, limit)
    headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(decision.remaining)}
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"rate limit of {limit} requests per minute exceeded; "
            f"retry in {decision.retry_after_s} s",
            headers | {"Retry-After": str(decision.retry_after_s)},
        )
    response.headers.update(headers)


async def authorized(
    request: Request,
    response: Response,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, authenticated and counted against their rate limit (401, 429).

    The app includes every protected router with this dependency; routes that need the
    caller ask for CurrentPrincipal, which FastAPI resolves once per request.

    Async, on the event loop: a sync dependency costs a hop to the thread pool, and under
    load those hops (with the GIL handoffs around them) were most of the order route's
    CPU. The rate limit goes through infra/aio_redis.py (RateLimiter.ahit); the PostgreSQL
    read of a key not in this process's cache still runs in the thread pool.
    """
    principal = await authenticated(request, credentials)
    await rate_limited(request, response, principal)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(authorized)]


def operator_only(principal: CurrentPrincipal) -> Principal:
    """A router dependency for operators' routes (/v1/admin/...): 403 `forbidden` else."""
    if not principal.is_operator:
        raise ApiError(403, "forbidden", "this route is for operators")
    return principal


# The 403 every operators' route may answer, for its OpenAPI responses.
OPERATOR_RESPONSE: dict[int | str, dict] = {
    403: {"model": ErrorBody, "description": "The caller is not an operator (code `forbidden`)"}
}
